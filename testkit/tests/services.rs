//! The test services themselves work: a real broker carries MQTT 5, survives a restart on the
//! same port, and a throwaway database is fresh and gone afterwards.

use std::time::Duration;

use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::mqttbytes::v5::Packet;
use rumqttc::v5::{AsyncClient, Event, EventLoop, MqttOptions};
use testkit::{Mosquitto, PgDatabase, unavailable};

fn client(port: u16, id: &str) -> (AsyncClient, EventLoop) {
    let mut opts = MqttOptions::new(id, "127.0.0.1", port);
    opts.set_keep_alive(Duration::from_secs(5));
    AsyncClient::new(opts, 10)
}

/// Polls until a publish arrives; returns its topic, payload and retain flag.
async fn next_publish(events: &mut EventLoop) -> (String, Vec<u8>, bool) {
    let wait = async {
        loop {
            match events.poll().await {
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    return (
                        String::from_utf8_lossy(&p.topic).into_owned(),
                        p.payload.to_vec(),
                        p.retain,
                    );
                }
                Ok(_) => {}
                Err(e) => panic!("MQTT connection failed: {e}"),
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(10), wait)
        .await
        .expect("a publish within 10 s")
}

#[tokio::test]
async fn a_private_broker_carries_mqtt5_on_a_free_port() {
    let Some(broker) = unavailable(Mosquitto::start()) else {
        return;
    };
    assert_ne!(broker.port(), 1883, "never the machine's shared broker");
    let (sub, mut sub_events) = client(broker.port(), "sub");
    sub.subscribe("rpm/v1/gw/+/readings", QoS::AtLeastOnce)
        .await
        .expect("subscribe queued");
    // Let the subscription reach the broker before publishing.
    loop {
        if let Ok(Event::Incoming(Packet::SubAck(_))) = sub_events.poll().await {
            break;
        }
    }
    let (publisher, mut pub_events) = client(broker.port(), "pub");
    let pump = tokio::spawn(async move { while pub_events.poll().await.is_ok() {} });
    publisher
        .publish(
            "rpm/v1/gw/gw-1/readings",
            QoS::AtLeastOnce,
            false,
            b"hello".to_vec(),
        )
        .await
        .expect("publish queued");
    let (topic, payload, _) = next_publish(&mut sub_events).await;
    assert_eq!(topic, "rpm/v1/gw/gw-1/readings");
    assert_eq!(payload, b"hello");
    pump.abort();
}

#[tokio::test]
async fn a_restarted_broker_keeps_its_port_and_retained_messages() {
    let Some(mut broker) = unavailable(Mosquitto::start()) else {
        return;
    };
    let port = broker.port();
    {
        let (publisher, mut events) = client(port, "retainer");
        publisher
            .publish(
                "rpm/v1/gw/gw-1/status",
                QoS::AtLeastOnce,
                true,
                b"online".to_vec(),
            )
            .await
            .expect("queued");
        // Wait for the broker's PUBACK so the message is the broker's before it restarts.
        loop {
            match events.poll().await {
                Ok(Event::Incoming(Packet::PubAck(_))) => break,
                Ok(_) => {}
                Err(e) => panic!("publish failed: {e}"),
            }
        }
    }
    broker.restart().expect("broker restarts");
    assert_eq!(broker.port(), port);
    assert!(broker.is_running());
    let (sub, mut events) = client(port, "late");
    sub.subscribe("rpm/v1/gw/+/status", QoS::AtLeastOnce)
        .await
        .expect("subscribe queued");
    let (topic, payload, retain) = next_publish(&mut events).await;
    assert_eq!(
        (topic.as_str(), payload.as_slice(), retain),
        ("rpm/v1/gw/gw-1/status", &b"online"[..], true)
    );
}

#[tokio::test]
async fn a_killed_broker_refuses_connections_until_started_again() {
    let Some(mut broker) = unavailable(Mosquitto::start()) else {
        return;
    };
    broker.kill();
    assert!(!broker.is_running());
    assert!(std::net::TcpStream::connect(("127.0.0.1", broker.port())).is_err());
    broker.start_again().expect("starts again");
    assert!(std::net::TcpStream::connect(("127.0.0.1", broker.port())).is_ok());
    assert!(
        broker.log().contains("mosquitto version"),
        "the log is kept: {}",
        broker.log()
    );
}

/// A client driven by `drive_mqtt` outlives a lost connection: after its broker was killed
/// and started again, what it publishes arrives. (A loop that stopped at the first error
/// refused every later publish with its request channel closed.)
#[tokio::test]
async fn a_driven_client_publishes_again_after_its_broker_comes_back() {
    let Some(mut broker) = unavailable(Mosquitto::start()) else {
        return;
    };
    let (publisher, events) = client(broker.port(), "driven");
    testkit::drive_mqtt(events);
    publisher
        .subscribe("t/ready", QoS::AtLeastOnce)
        .await
        .expect("queued");
    tokio::time::sleep(Duration::from_millis(300)).await;
    broker.kill();
    // The driven client's poll fails now (connection reset, then refused).
    tokio::time::sleep(Duration::from_millis(500)).await;
    broker.start_again().expect("starts again");
    let (sub, mut sub_events) = client(broker.port(), "watcher");
    sub.subscribe("t/again", QoS::AtLeastOnce)
        .await
        .expect("queued");
    let watched = tokio::spawn(async move { next_publish(&mut sub_events).await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    publisher
        .publish("t/again", QoS::AtLeastOnce, false, b"back".to_vec())
        .await
        .expect("the driven client still takes requests");
    let (topic, payload, _) = watched.await.expect("watcher");
    assert_eq!(
        (topic.as_str(), payload.as_slice()),
        ("t/again", &b"back"[..])
    );
}

#[tokio::test]
async fn each_test_database_is_fresh_and_dropped_afterwards() {
    use sqlx::Connection;
    let Some(db) = unavailable(PgDatabase::create().await) else {
        return;
    };
    let name = db.name().to_owned();
    let mut conn = sqlx::PgConnection::connect(db.url())
        .await
        .expect("connect to the fresh database");
    let tables: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM information_schema.tables WHERE table_schema = 'public'",
    )
    .fetch_one(&mut conn)
    .await
    .expect("query");
    assert_eq!(tables, 0, "a fresh database has no tables");
    sqlx::query("CREATE TABLE t (x int)")
        .execute(&mut conn)
        .await
        .expect("create table");
    conn.close().await.expect("close");

    let Some(other) = unavailable(PgDatabase::create().await) else {
        return;
    };
    assert_ne!(other.name(), name);
    drop(db);
    let mut admin = sqlx::PgConnection::connect(&testkit::pg_admin_url())
        .await
        .expect("admin connection");
    let left: i64 = sqlx::query_scalar("SELECT count(*) FROM pg_database WHERE datname = $1")
        .bind(&name)
        .fetch_one(&mut admin)
        .await
        .expect("query");
    assert_eq!(left, 0, "dropped with its owner");
}

#[test]
fn a_missing_service_skips_locally_and_fails_under_ci() {
    let missing: Result<(), &str> = Err("no such service");
    if testkit::in_ci() {
        let caught = std::panic::catch_unwind(|| unavailable(missing));
        assert!(
            caught.is_err(),
            "under CI a missing service must fail the test"
        );
    } else {
        assert!(unavailable(missing).is_none());
    }
    assert_eq!(unavailable::<_, &str>(Ok(5)), Some(5));
}

#[tokio::test]
async fn a_private_postgresql_survives_a_crash_and_keeps_committed_rows() {
    use sqlx::Connection;
    let Some(mut server) = unavailable(testkit::PgServer::start()) else {
        return;
    };
    let url = server.url("postgres");
    let mut conn = sqlx::PgConnection::connect(&url).await.expect("connect");
    sqlx::query("CREATE TABLE t (x int)")
        .execute(&mut conn)
        .await
        .expect("create");
    sqlx::query("INSERT INTO t VALUES (1)")
        .execute(&mut conn)
        .await
        .expect("insert");
    drop(conn);
    server.stop("immediate").expect("crash");
    assert!(
        sqlx::PgConnection::connect(&url).await.is_err(),
        "down means down"
    );
    server.start_again().expect("recovers");
    let mut conn = sqlx::PgConnection::connect(&url).await.expect("reconnect");
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM t")
        .fetch_one(&mut conn)
        .await
        .expect("count");
    assert_eq!(n, 1, "a committed row survives the crash");
}
