//! The consumer's pipeline (batch N+1 validated while batch N commits) against a real broker
//! and a PostgreSQL server that crashes mid-stream: commits happen in arrival order, every
//! acknowledgement follows its commit in the order the broker sent the messages, and nothing
//! is lost or stored twice.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use ingest::consume::{Consumer, ConsumerSettings, IngestStats, client_options};
use ingest::record::bench::BenchFleet;
use ingest::record::{Page, Record};
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::{AsyncClient, MqttOptions};
use testkit::{Mosquitto, PgServer, unavailable};
use time::OffsetDateTime;
use tokio_util::sync::CancellationToken;
use vitals::{BrokerConfig, Envelope};

const CLIENT: &str = "ingest-pipeline";
const MESSAGES: u64 = 300;
const PER_MESSAGE: usize = 4;

/// The packet ids of the readings PUBLISHes the broker sent to the consumer, and of the
/// PUBACKs it received from it, each in log order.
fn publishes_and_acks(log: &str) -> (Vec<u32>, Vec<u32>) {
    let mut sent = Vec::new();
    let mut acked = Vec::new();
    for line in log.lines() {
        if let Some(rest) = line.split_once(&format!("Sending PUBLISH to {CLIENT} (")) {
            if !rest.1.contains("/readings'") {
                continue;
            }
            // "d0, q1, r0, m12, 'topic', ..."
            let mid = rest
                .1
                .split(", ")
                .find_map(|f| f.strip_prefix('m')?.parse::<u32>().ok());
            sent.push(mid.expect("packet id in a PUBLISH log line"));
        } else if let Some(rest) = line.split_once(&format!("Received PUBACK from {CLIENT} (Mid: "))
        {
            let mid: String = rest.1.chars().take_while(char::is_ascii_digit).collect();
            acked.push(mid.parse().expect("packet id in a PUBACK log line"));
        }
    }
    (sent, acked)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_batches_ack_in_order_and_lose_nothing_when_postgresql_crashes() {
    let Some(broker) = unavailable(Mosquitto::start()) else {
        return;
    };
    let Some(pg) = unavailable(PgServer::start()) else {
        return;
    };
    let record = Record::connect(&pg.url("postgres"), 4)
        .await
        .expect("open PostgreSQL record");
    let fleet = BenchFleet::setup(&record, 10).await.expect("fleet");

    let config = BrokerConfig::new(broker.url().parse().expect("url"));
    let options = client_options(&config, CLIENT, 16).expect("options");
    let cap = options.request_channel_capacity();
    let stats = Arc::new(IngestStats::default());
    let shutdown = CancellationToken::new();
    let consumer = Consumer {
        settings: ConsumerSettings {
            group: "ingest".into(),
            // Small batches, so many are in the pipeline when the database goes away.
            batch_max: 20,
            batch_linger: Duration::from_millis(5),
            max_inflight: 16,
            max_future: Duration::from_secs(300),
            max_backoff: Duration::from_millis(300),
        },
        record: record.clone(),
        mqtt: AsyncClient::new(options, cap),
        stats: stats.clone(),
        shutdown: shutdown.clone(),
    };
    let task = tokio::spawn(consumer.run());
    broker
        .wait_for_log(
            "$share/ingest/rpm/v1/gw/+/readings",
            1,
            Duration::from_secs(20),
        )
        .expect("the consumer subscribes");

    // One publisher, QoS 1, in order: envelope k carries readings 4k..4k+3 and number k+1.
    let mut opts = MqttOptions::new("pipeline-publisher", "127.0.0.1", broker.port());
    opts.set_max_packet_size(Some(4 * 1024 * 1024));
    let (client, events) = AsyncClient::new(opts, 64);
    testkit::drive_mqtt(events);
    let topic = vitals::Topic::new(fleet.gateway.clone(), vitals::Channel::Readings).to_string();
    let payloads: Vec<Vec<u8>> = (0..MESSAGES)
        .map(|k| {
            let readings = fleet
                .readings(k * PER_MESSAGE as u64, PER_MESSAGE)
                .into_iter()
                .map(|(r, _)| r)
                .collect();
            Envelope {
                v: vitals::ENVELOPE_VERSION,
                gateway: fleet.gateway.clone(),
                seq: k + 1,
                sent_at: OffsetDateTime::now_utc(),
                readings,
            }
            .encode()
        })
        .collect();
    // The first third goes out before the crash; the rest only once PostgreSQL is down, so
    // messages certainly arrive while the database is gone, however fast this machine is.
    let (crashed_tx, crashed_rx) = tokio::sync::oneshot::channel::<()>();
    let publisher = tokio::spawn(async move {
        let mut crashed = Some(crashed_rx);
        for (k, p) in payloads.into_iter().enumerate() {
            if k as u64 == MESSAGES / 3
                && let Some(rx) = crashed.take()
            {
                rx.await.expect("the crash is signalled");
            }
            client
                .publish(&topic, QoS::AtLeastOnce, false, p)
                .await
                .expect("publish");
            // A steady stream, so the crash lands mid-stream.
            tokio::time::sleep(Duration::from_millis(3)).await;
        }
    });

    // Crash PostgreSQL once a few batches are in, and bring it back a moment later.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while stats.readings_stored.load(Ordering::Relaxed) < 200 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "ingest stored nothing"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let stored_at_crash = stats.readings_stored.load(Ordering::Relaxed);
    let mut pg = tokio::task::spawn_blocking(move || {
        let mut pg = pg;
        pg.stop("immediate").expect("crash PostgreSQL");
        pg
    })
    .await
    .expect("joined");
    crashed_tx.send(()).expect("the publisher waits");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let pg = tokio::task::spawn_blocking(move || {
        pg.start_again().expect("restart PostgreSQL");
        pg
    })
    .await
    .expect("joined");
    publisher.await.expect("published");

    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    while stats.messages.load(Ordering::Relaxed) < MESSAGES {
        if tokio::time::Instant::now() >= deadline {
            let (sent, acked) = publishes_and_acks(&broker.log());
            eprintln!(
                "broker sent {} and got {} acks; log tail:",
                sent.len(),
                acked.len()
            );
            let log = broker.log();
            let lines: Vec<&str> = log.lines().collect();
            for l in &lines[lines.len().saturating_sub(40)..] {
                eprintln!("{l}");
            }
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "only {} of {MESSAGES} messages processed ({} readings stored, {} batches, {} \
             database retries, {} rejected)",
            stats.messages.load(Ordering::Relaxed),
            stats.readings_stored.load(Ordering::Relaxed),
            stats.batches.load(Ordering::Relaxed),
            stats.db_retries.load(Ordering::Relaxed),
            stats.rejected_total(),
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    shutdown.cancel();
    task.await.expect("joined").expect("clean stop");

    let total = MESSAGES * PER_MESSAGE as u64;
    // The crash came mid-stream (two thirds of the messages were published only after it).
    // Whether ingest saw an error or just waited for a connection depends on where each
    // batch was (the pool tests a connection before handing it out and waits for a new
    // one), so the retry counter is not asserted.
    assert!(
        stored_at_crash < total,
        "the crash came before the stream ended ({stored_at_crash} of {total} stored)"
    );
    assert_eq!(
        record.count_readings().await.expect("count"),
        total,
        "nothing lost, nothing twice"
    );
    assert_eq!(stats.rejected_total(), 0, "nothing dead-lettered");

    // Commits in arrival order: a later message's readings were never committed before an
    // earlier one's.
    let mut stored = Vec::new();
    for patient in &fleet.patients {
        let mut page = Page::first(1000);
        loop {
            let got = record
                .readings_for_patient(
                    patient,
                    OffsetDateTime::UNIX_EPOCH,
                    fleet.start + Duration::from_secs(3600),
                    page,
                )
                .await
                .expect("read back");
            stored.extend(got.readings);
            match got.next {
                Some(next) => page = next,
                None => break,
            }
        }
    }
    assert_eq!(stored.len() as u64, total);
    stored.sort_by_key(|r| r.gateway_seq);
    for pair in stored.windows(2) {
        assert!(
            pair[0].ingested_at <= pair[1].ingested_at,
            "reading {} committed after reading {}",
            pair[0].gateway_seq,
            pair[1].gateway_seq
        );
    }

    // Acknowledgements in the order the broker sent the messages, each exactly once.
    let (sent, acked) = publishes_and_acks(&broker.log());
    assert_eq!(
        sent.len() as u64,
        MESSAGES,
        "the broker sent each message once"
    );
    assert_eq!(acked, sent, "PUBACKs in the order of the PUBLISHes");
    drop(pg);
}
