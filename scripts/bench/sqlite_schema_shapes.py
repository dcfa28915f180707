#!/usr/bin/env python3
"""How fast SQLite takes the same readings into differently shaped tables.

A probe for BENCHMARKS.md (issue 6's ratio targets), not part of any test: it asks whether a
different record schema could let ingest reach half the raw insert rate. Rows are generated
before the clock starts; each transaction holds 10 000 readings, as ingest's `batch_max`; WAL
with synchronous=FULL, as the record. Python's sqlite3 adds the same per-row cost to every
shape, so compare shapes within one run, not with `rpm bench ingest`'s figures.

    python3 scripts/bench/sqlite_schema_shapes.py [PATIENTS] [READINGS]

Shapes:
  keys           readings and values (two rows a reading) with primary keys only:
                 `rpm bench ingest`'s "raw insert"
  record         the record's indexes too: per-patient timeline, values' key, cohort and
                 per-patient series ("raw insert, record's indexes")
  no_series      the record without the per-patient, per-kind series index
  one_row        one row a reading with its values inline, primary key and per-patient index
  one_row_keys   one row a reading, primary key only
"""

import os
import random
import sys
import tempfile
import time
import uuid

BATCH = 10_000
READING = (
    "reading_id TEXT PRIMARY KEY NOT NULL, patient_key TEXT NOT NULL, device_id TEXT NOT NULL, "
    "gateway_id TEXT NOT NULL, user_index INTEGER, reading_type TEXT NOT NULL, device_time TEXT, "
    "measured_at INTEGER NOT NULL, received_at INTEGER NOT NULL, ingested_at INTEGER NOT NULL, "
    "flags INTEGER NOT NULL, gateway_seq INTEGER NOT NULL"
)
VALUES = (
    "reading_id TEXT NOT NULL, kind TEXT NOT NULL, patient_key TEXT NOT NULL, "
    "measured_at INTEGER NOT NULL, value_text TEXT, value_num REAL, unit TEXT NOT NULL, absent TEXT"
)
SHAPES = {
    "keys": [f"CREATE TABLE r ({READING})", f"CREATE TABLE v ({VALUES})"],
    "record": [
        f"CREATE TABLE r ({READING})",
        f"CREATE TABLE v ({VALUES})",
        "CREATE INDEX r_patient_time ON r (patient_key, measured_at)",
        "CREATE UNIQUE INDEX v_key ON v (reading_id, kind)",
        "CREATE INDEX v_cohort ON v (kind, measured_at, value_num)",
        "CREATE INDEX v_series ON v (patient_key, kind, measured_at)",
    ],
    "no_series": [
        f"CREATE TABLE r ({READING})",
        f"CREATE TABLE v ({VALUES})",
        "CREATE INDEX r_patient_time ON r (patient_key, measured_at)",
        "CREATE UNIQUE INDEX v_key ON v (reading_id, kind)",
        "CREATE INDEX v_cohort ON v (kind, measured_at, value_num)",
    ],
    "one_row": [
        f"CREATE TABLE r ({READING}, vals TEXT NOT NULL)",
        "CREATE INDEX r_patient_time ON r (patient_key, measured_at)",
    ],
    "one_row_keys": [f"CREATE TABLE r ({READING}, vals TEXT NOT NULL)"],
}


def reading_id(i):
    """Time-ordered like the record's ids: milliseconds first, then hash bits."""
    return str(uuid.UUID(int=((1_767_225_600_000 + i) << 80) | random.getrandbits(80)))


def run(shape, patients, readings, directory):
    path = os.path.join(directory, f"{shape}.sqlite")
    db = __import__("sqlite3").connect(path, isolation_level=None)
    for pragma in ("journal_mode=wal", "synchronous=full", "cache_size=-65536", "temp_store=memory"):
        db.execute(f"PRAGMA {pragma}")
    for sql in SHAPES[shape]:
        db.execute(sql)
    batches = []
    for start in range(0, readings, BATCH):
        batches.append([
            (reading_id(i), f"bench-pk-{i % patients}", "eui64:be7c000000000000", "bench-gw", None,
             "oximetry_spot_check", None, i * 1000, i, i, 0, i)
            for i in range(start, min(start + BATCH, readings))
        ])
    one_row = shape.startswith("one_row")
    started = time.perf_counter()
    for rows in batches:
        db.execute("BEGIN")
        if one_row:
            db.executemany("INSERT INTO r VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
                           [r + ("spo2=97%;pulse_rate=72/min",) for r in rows])
        else:
            db.executemany("INSERT INTO r VALUES (?,?,?,?,?,?,?,?,?,?,?,?)", rows)
            db.executemany("INSERT INTO v VALUES (?,?,?,?,?,?,?,?)",
                           [(r[0], kind, r[1], r[7], "97", 97.0, "%", None)
                            for r in rows for kind in ("spo2", "pulse_rate")])
        db.execute("COMMIT")
    elapsed = time.perf_counter() - started
    db.close()
    return readings / elapsed


def main():
    patients = int(sys.argv[1]) if len(sys.argv) > 1 else 200
    readings = int(sys.argv[2]) if len(sys.argv) > 2 else 200_000
    with tempfile.TemporaryDirectory() as directory:
        rates = {shape: run(shape, patients, readings, directory) for shape in SHAPES}
    print(f"{readings} readings, {patients} patients, SQLite {__import__('sqlite3').sqlite_version}")
    for shape, rate in rates.items():
        print(f"{shape:13} {rate:9.0f} readings/s  {rate / rates['keys']:.2f} x keys")


if __name__ == "__main__":
    main()
