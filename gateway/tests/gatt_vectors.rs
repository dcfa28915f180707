//! Checks every byte vector in `fixtures/gatt/*.toml` against the codecs.
//!
//! The vectors come from independent public sources (other implementations' test suites and
//! the specifications' own examples); each names its source. See `fixtures/gatt/README.md`.

use std::path::{Path, PathBuf};

use gateway::codec::{self, Float11073};
use serde::Deserialize;
use serde_json::Value;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    vector: Vec<Vector>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Vector {
    name: String,
    uuid: Option<u16>,
    format: Option<String>,
    hex: String,
    source: String,
    expect: Option<toml::Value>,
    expect_json: Option<String>,
    error: Option<String>,
    #[allow(dead_code)]
    note: Option<String>,
}

fn fixtures_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures/gatt")
}

fn load() -> Vec<(String, Vector)> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(fixtures_dir())
        .expect("fixtures/gatt exists")
        .map(|e| e.expect("readable dir entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "toml"))
        .collect();
    files.sort();
    let mut out = Vec::new();
    for path in files {
        let text = std::fs::read_to_string(&path).expect("readable fixture");
        let file: File =
            toml::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let stem = path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        out.extend(file.vector.into_iter().map(|v| (stem.clone(), v)));
    }
    out
}

/// Every key in `expected` is in `actual` with an equal value (recursively for objects;
/// arrays and scalars must be equal).
fn contains(actual: &Value, expected: &Value, path: &str) -> Result<(), String> {
    match (actual, expected) {
        (Value::Object(a), Value::Object(e)) => {
            for (k, ev) in e {
                let av = a
                    .get(k)
                    .ok_or_else(|| format!("{path}.{k}: missing in {actual}"))?;
                contains(av, ev, &format!("{path}.{k}"))?;
            }
            Ok(())
        }
        (Value::Number(a), Value::Number(e)) => {
            // TOML floats and JSON floats: compare numerically.
            match (a.as_f64(), e.as_f64()) {
                (Some(x), Some(y)) if x == y => Ok(()),
                _ => Err(format!("{path}: {a} != expected {e}")),
            }
        }
        (a, e) if a == e => Ok(()),
        (a, e) => Err(format!("{path}: {a} != expected {e}")),
    }
}

fn check(file: &str, v: &Vector) -> Result<(), String> {
    let bytes = hex::decode(v.hex.replace(' ', "")).map_err(|e| format!("bad hex: {e}"))?;
    if v.source.trim().len() < 10 {
        return Err("every vector needs a source".into());
    }
    let expected = match (&v.expect, &v.expect_json) {
        (Some(t), None) => Some(serde_json::to_value(t).map_err(|e| e.to_string())?),
        (None, Some(j)) => Some(serde_json::from_str(j).map_err(|e| e.to_string())?),
        (None, None) => None,
        (Some(_), Some(_)) => return Err("both expect and expect_json".into()),
    };
    if expected.is_some() == v.error.is_some() {
        return Err("exactly one of expect/expect_json and error".into());
    }

    // Decode, and encode back to compare bytes where the value is canonical.
    let (result, reencoded): (Result<Value, String>, Option<Vec<u8>>) =
        match (v.uuid, v.format.as_deref()) {
            (Some(uuid), None) => match codec::decode(uuid, &bytes) {
                Ok(d) => {
                    let json = serde_json::to_value(&d).map_err(|e| e.to_string())?;
                    let again = codec::encode(&d).map_err(|e| format!("re-encode: {e}"))?;
                    let back = codec::decode(uuid, &again)
                        .map_err(|e| format!("decode re-encoded: {e}"))?;
                    if back.clone().without_quirks() != d.clone().without_quirks() {
                        return Err(format!("re-encoded value differs: {back:?} vs {d:?}"));
                    }
                    (Ok(json), d.quirks().is_empty().then_some(again))
                }
                Err(e) => (Err(e.to_string()), None),
            },
            (None, Some("sfloat")) => {
                let raw: [u8; 2] = bytes
                    .as_slice()
                    .try_into()
                    .map_err(|_| "sfloat needs 2 bytes")?;
                let f = Float11073::from_sfloat_bits(u16::from_le_bytes(raw));
                let again = f
                    .to_sfloat_bits()
                    .map_err(|e| e.to_string())?
                    .to_le_bytes()
                    .to_vec();
                (
                    serde_json::to_value(f).map_err(|e| e.to_string()),
                    Some(again),
                )
            }
            (None, Some("float")) => {
                let raw: [u8; 4] = bytes
                    .as_slice()
                    .try_into()
                    .map_err(|_| "float needs 4 bytes")?;
                let f = Float11073::from_float_bits(u32::from_le_bytes(raw));
                let again = f
                    .to_float_bits()
                    .map_err(|e| e.to_string())?
                    .to_le_bytes()
                    .to_vec();
                (
                    serde_json::to_value(f).map_err(|e| e.to_string()),
                    Some(again),
                )
            }
            _ => {
                return Err(format!(
                    "{file}: need exactly one of uuid or format sfloat/float"
                ));
            }
        };

    match (result, &expected, &v.error) {
        (Ok(json), Some(exp), None) => {
            contains(&json, exp, "$").map_err(|e| format!("{e}\n  decoded: {json}"))?;
            if let Some(again) = reencoded
                && again != bytes
            {
                return Err(format!(
                    "encode gave {} instead of {}",
                    hex::encode(&again),
                    hex::encode(&bytes)
                ));
            }
            Ok(())
        }
        (Err(got), None, Some(want)) if &got == want => Ok(()),
        (Err(got), None, Some(want)) => Err(format!("error {got:?}, expected {want:?}")),
        (Ok(json), None, Some(want)) => Err(format!("decoded {json}, expected error {want:?}")),
        (Err(got), Some(_), None) => Err(format!("decode failed: {got}")),
        _ => Err("inconsistent vector".into()),
    }
}

#[test]
fn every_fixture_vector_decodes_as_its_source_says() {
    let vectors = load();
    assert!(vectors.len() >= 60, "only {} vectors", vectors.len());
    let mut names = std::collections::HashSet::new();
    let mut failures = Vec::new();
    for (file, v) in &vectors {
        if !names.insert(v.name.clone()) {
            failures.push(format!("{file}/{}: duplicate name", v.name));
        }
        if let Err(e) = check(file, v) {
            failures.push(format!("{file}/{}: {e}", v.name));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} vectors failed:\n{}",
        failures.len(),
        vectors.len(),
        failures.join("\n")
    );
}

#[test]
fn every_supported_characteristic_has_a_fixture() {
    let covered: std::collections::HashSet<u16> =
        load().iter().filter_map(|(_, v)| v.uuid).collect();
    let missing: Vec<&str> = codec::SUPPORTED
        .iter()
        .filter(|(u, _)| !covered.contains(u))
        .map(|(_, n)| *n)
        .collect();
    // The DIS revision strings share one decoder with the manufacturer name.
    let allowed = [
        "serial_number",
        "hardware_revision",
        "firmware_revision",
        "software_revision",
    ];
    let unexpected: Vec<&&str> = missing.iter().filter(|n| !allowed.contains(n)).collect();
    assert!(unexpected.is_empty(), "no fixture for {unexpected:?}");
}
