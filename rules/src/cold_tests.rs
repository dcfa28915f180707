//! The cold part's word encodings round-trip, and its layout gives every rule, run, confirm
//! slot and day summary storage of its own.

use super::*;
use crate::Profile;

fn rid(n: u64) -> ReadingId {
    ReadingId(uuid::Uuid::from_u64_pair(
        n.wrapping_mul(0x9E37_79B9_7F4A_7C15),
        !n,
    ))
}

#[test]
fn kinds_are_found_by_index() {
    for k in Kind::ALL {
        assert_eq!(Kind::ALL[k.index()], k);
    }
}

#[test]
fn slots_and_runs_round_trip() {
    let mut l = FRESH_RULE;
    assert_eq!(l.slot(), None);
    let mut slots = vec![
        None,
        Some(Slot {
            at: Timestamp(-5),
            abnormal: None,
        }),
    ];
    for (i, kind) in Kind::ALL.into_iter().enumerate() {
        for value in [0.0, -0.0, 93.5, f64::MIN_POSITIVE, f64::NAN, f64::INFINITY] {
            slots.push(Some(Slot {
                at: Timestamp(i as i64 * 1_000 - 7),
                abnormal: Some(EvidenceItem {
                    reading: rid(i as u64),
                    at: Timestamp(i64::MIN + i as i64),
                    kind,
                    value,
                }),
            }));
        }
    }
    for s in slots {
        l.store_slot(s);
        // Compared as bits: NaN values are kept exactly.
        assert_eq!(format!("{:?}", l.slot()), format!("{s:?}"));
        let item = s.and_then(|s| s.abnormal);
        l.set_run(item);
        assert_eq!(format!("{:?}", l.run()), format!("{item:?}"));
    }
    l.store_slot(None);
    assert_eq!(l, FRESH_RULE, "none is all zeros");
}

#[test]
fn the_state_word_keeps_level_head_and_mask_apart() {
    let mut l = FRESH_RULE;
    l.set_level(7);
    let mut ring = Ring {
        slots: &mut [],
        state: &mut l.w[0],
    };
    ring.set(5, 0b10_1010);
    assert_eq!((ring.next(), ring.mask()), (5, 0b10_1010));
    assert_eq!(l.level(), 7);
    assert_eq!(l.mask(), 0b10_1010);
    l.set_level(2);
    assert_eq!((l.level(), l.mask()), (2, 0b10_1010));
}

#[test]
fn day_lines_round_trip_and_start_empty() {
    let c = Compiled::new(
        Profile::from_toml(include_str!("../../fixtures/profiles/copd.toml"))
            .expect("parses")
            .build()
            .expect("valid"),
    );
    let mut p = PatientState::new(ProfileIdx(0), &c, Timestamp(123_456), false);
    assert_eq!(p.cold.rules.len(), c.sizes.cold);
    assert_eq!(p.enrolled(), Timestamp(123_456));
    let rings: Vec<(u16, u16)> = c
        .layout
        .iter()
        .filter_map(|l| match l.det {
            DetSlot::Days {
                day_start, day_len, ..
            } => Some((day_start, day_len)),
            _ => None,
        })
        .collect();
    assert_eq!(rings.len(), 3);
    for &(start, days) in &rings {
        let ring = DayLines {
            lines: &mut p.cold.rules,
            start: usize::from(start),
            days: usize::from(days),
        };
        assert!((0..ring.days()).all(|i| ring.get(i).is_none()));
    }
    // Every summary of every ring is its own.
    for (r, &(start, days)) in rings.iter().enumerate() {
        let mut ring = DayLines {
            lines: &mut p.cold.rules,
            start: usize::from(start),
            days: usize::from(days),
        };
        for i in 0..ring.days() {
            ring.set(i, (r as i64 * 1000 + i as i64, -(i as f64)));
        }
    }
    for (r, &(start, days)) in rings.iter().enumerate() {
        let ring = DayLines {
            lines: &mut p.cold.rules,
            start: usize::from(start),
            days: usize::from(days),
        };
        for i in 0..ring.days() {
            assert_eq!(ring.get(i), Some((r as i64 * 1000 + i as i64, -(i as f64))));
        }
    }
    // The rules' states, runs and confirm slots are lines of their own, before the days.
    let first_day = rings.iter().map(|r| usize::from(r.0)).min().unwrap_or(0) / DAYS_PER_LINE;
    let mut owner = vec![None; c.sizes.cold];
    for (r, lay) in c.layout.iter().enumerate() {
        let lines = std::iter::once(r)
            .chain(lay.run.map(usize::from))
            .chain((0..usize::from(lay.ring_len)).map(|k| usize::from(lay.ring_start) + k));
        for l in lines {
            assert!(l < first_day, "rule {r}: line {l} among the days");
            assert_eq!(owner[l].replace(r), None, "line {l} twice");
        }
    }
    assert_eq!(p.enrolled(), Timestamp(123_456), "the days left it alone");
}

/// The day statistics of a personal best follow the window day by day without reading the
/// whole ring (when the next day begins), and always agree with the ring read whole.
#[test]
fn a_rolling_best_agrees_with_its_ring_read_whole() {
    let mut x = 0x9E37_79B9_7F4A_7C15u64;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    for len in [1usize, 2, 3, 7, 30, 92] {
        let mut ring = vec![None; len];
        let mut stats = DayStats::new();
        let mut day = 20_000i64;
        for _ in 0..2_000 {
            // Mostly the next day; now and then a gap, or a second reading the same day.
            day += match next() % 16 {
                0 => 1 + (next() % 40) as i64,
                1 => 0,
                _ => 1,
            };
            let at = Timestamp(day * 86_400_000 + (next() % 86_400_000) as i64);
            stats.roll(&mut ring[..], at, Summary::Max);
            let window: Vec<f64> = ring
                .iter()
                .flatten()
                .filter(|(d, _)| (day - len as i64..day).contains(d))
                .map(|&(_, v)| v)
                .collect();
            assert_eq!(usize::from(stats.cached_days), window.len(), "day {day}");
            let best = window.iter().copied().reduce(f64::max);
            assert_eq!(stats.cached, best, "day {day}");
            // Some days have readings (a few, ties now and then), some none.
            for _ in 0..next() % 3 {
                stats.add(at, (next() % 8) as f64 * 10.0, Summary::Max);
            }
        }
    }
}
