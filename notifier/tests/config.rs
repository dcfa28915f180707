//! The sample config loads and builds; a misspelt key is refused by name.

use notifier::NotifierConfig;

const SAMPLE: &str = include_str!("fixtures/notifier.toml");

#[tokio::test]
async fn sample_config_loads_and_builds() {
    let config: NotifierConfig = toml::from_str(SAMPLE).expect("sample parses");
    let runtime = config.build().expect("sample builds");
    assert_eq!(runtime.dispatch.retry.max_attempts, 12);
    assert_eq!(
        runtime.policy.group_wait,
        std::time::Duration::from_secs(30)
    );
    let pt = vitals::PatientKey::new("pt-0001").expect("key");
    assert_eq!(runtime.directory.tiers(&pt), 2);
}

#[test]
fn misspelt_key_is_refused_by_name() {
    let bad = SAMPLE.replace("group_interval", "group_intervall");
    let err = toml::from_str::<NotifierConfig>(&bad)
        .expect_err("unknown key refused")
        .to_string();
    assert!(err.contains("group_intervall"), "{err}");
}

#[tokio::test]
async fn a_lease_shorter_than_a_channel_timeout_is_refused() {
    let bad = SAMPLE.replace("lease = \"2m\"", "lease = \"10s\"");
    let config: NotifierConfig = toml::from_str(&bad).expect("parses");
    let err = config.build().expect_err("refused").to_string();
    assert!(err.contains("dispatch.lease"), "{err}");
}

#[tokio::test]
async fn an_unknown_rota_person_is_refused() {
    let bad = SAMPLE.replace("person = \"charge.nurse\"", "person = \"nobody\"");
    let config: NotifierConfig = toml::from_str(&bad).expect("parses");
    let err = config.build().expect_err("refused").to_string();
    assert!(err.contains("nobody"), "{err}");
}

#[test]
fn building_outside_a_runtime_is_an_error_not_a_panic() {
    let config: NotifierConfig = toml::from_str(SAMPLE).expect("parses");
    assert!(matches!(
        config.build(),
        Err(notifier::ConfigError::NoRuntime)
    ));
}
