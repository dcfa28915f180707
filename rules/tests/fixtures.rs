//! Every profile and override under `fixtures/profiles/` loads and validates, so none can rot.

use std::path::{Path, PathBuf};

use rules::{Check, Profile, ProfileOverride, Ruleset};

fn dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures/profiles")
}

fn toml_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .expect("fixtures/profiles exists")
        .map(|e| e.expect("readable entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "toml"))
        .collect();
    files.sort();
    files
}

fn load(path: &Path) -> (Profile, Ruleset) {
    let text = std::fs::read_to_string(path).expect("readable");
    let profile = Profile::from_toml(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let set = profile
        .build()
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    (profile, set)
}

#[test]
fn every_profile_loads_and_validates_and_is_named_after_its_file() {
    let files = toml_files(&dir());
    let mut ids = Vec::new();
    for path in &files {
        let (profile, set) = load(path);
        let stem = path
            .file_stem()
            .and_then(|s| s.to_str())
            .expect("utf-8 name");
        assert_eq!(profile.id, stem, "{}", path.display());
        assert!(!set.rules.is_empty(), "{}", path.display());
        assert!(profile.version >= 1);
        ids.push(profile.id);
    }
    for required in ["copd", "copd_hypercapnic", "default", "hypertension"] {
        assert!(ids.iter().any(|i| i == required), "missing {required}.toml");
    }
}

#[test]
fn the_hypercapnic_profile_scores_news2_on_scale_2() {
    let (_, set) = load(&dir().join("copd_hypercapnic.toml"));
    let news2 = set
        .rules
        .iter()
        .find(|r| r.id == "news2")
        .expect("news2 rule");
    assert!(matches!(
        news2.check,
        rules::Check::News2 {
            scale: rules::news2::Spo2Scale::Two,
            ..
        }
    ));
    let (_, copd) = load(&dir().join("copd.toml"));
    let news2 = copd
        .rules
        .iter()
        .find(|r| r.id == "news2")
        .expect("news2 rule");
    assert!(matches!(
        news2.check,
        rules::Check::News2 {
            scale: rules::news2::Spo2Scale::One,
            ..
        }
    ));
}

#[test]
fn every_override_applies_to_its_base_profile() {
    let files = toml_files(&dir().join("overrides"));
    assert!(!files.is_empty());
    for path in files {
        let text = std::fs::read_to_string(&path).expect("readable");
        let o =
            ProfileOverride::from_toml(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let (base, _) = load(&dir().join(format!("{}.toml", o.base)));
        let set = base
            .build_with(&o)
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        assert_eq!(set.overlay, Some((o.id.clone(), o.version)));
    }
}

#[test]
fn the_example_oxygen_override_scores_news2_as_on_oxygen() {
    let text = std::fs::read_to_string(dir().join("overrides/example-copd-on-oxygen.toml"))
        .expect("readable");
    let o = ProfileOverride::from_toml(&text).expect("parses");
    let (base, _) = load(&dir().join("copd.toml"));
    let on_oxygen = |set: &Ruleset| {
        set.rules.iter().find_map(|r| match r.check {
            Check::News2 { on_oxygen, .. } => Some(on_oxygen),
            _ => None,
        })
    };
    assert_eq!(on_oxygen(&base.build().expect("base")), Some(false));
    assert_eq!(on_oxygen(&base.build_with(&o).expect("merged")), Some(true));
}
