//! The rules engine inside the consumer: threshold profiles loaded at start-up, per-patient
//! state in memory, rebuilt from the record when it may be out of date, and the engine's
//! events turned into the record's [`AlertWrite`]s.
//!
//! # Profiles
//!
//! [`Rules::load`] reads every `*.toml` in `[rules] profiles_dir` as a [`Profile`] and every
//! `*.toml` in its `overrides/` subdirectory as a [`ProfileOverride`] on the profile its
//! `base` names, and builds them all; a bad file refuses start-up with the file named and the
//! engine's precise [`ProfileError`]. Profile and override ids share one namespace. A
//! patient's ruleset is their registry `profile_id` when set (a profile id, or an override id:
//! the override on its base); else the profile named like their condition (`copd`,
//! `hypertension`, …) when there is one; else `[rules] default_profile`. A `profile_id` that
//! names nothing loaded falls back the same way, with a warning (the id, never the patient).
//! Thresholds a clinician saved in the console (`threshold_versions`, the latest version)
//! take precedence: an override on the base profile it names, built when the patient's state
//! is rebuilt, which saving forces by bumping the patient's rule version.
//!
//! # State, and when it is rebuilt
//!
//! Patients become dense engine indices the first time this node meets them; every
//! registered patient is enrolled at start-up, so time-driven rules (missing data, silent
//! gateway) cover patients who have stopped measuring. A patient's state is rebuilt
//! ([`Engine::rebuild`], replaying the record over the longest window its ruleset looks back,
//! at most [`rules::MAX_DAYS`] days) when:
//!
//! - the node has not built it since start;
//! - the record's `rule_versions` row for the patient says another node evaluated readings
//!   this node did not see (checked in the batch transaction: the node rolls back, rebuilds
//!   and tries again);
//! - a transaction this node evaluated did not commit: the evaluation changed state for
//!   readings that are not in the record, so it is thrown away, never double-counted.
//!
//! Replay raises nothing: alerts already open in the record stay as they are, and the
//! engine's open alerts after replay are what later readings update or resolve. Alerts the
//! tick raised (missing data, silent gateway, a confirmation nobody made) are not rebuilt by
//! replaying readings: the record's open ones are handed to the engine after the replay, which
//! holds those still due open (so they are neither raised again nor forgotten) and resolves
//! in the record those that cleared while this node was not evaluating the patient. When a
//! patient's thresholds changed, an alert the stored readings breach under the new thresholds
//! is raised in the record at once. Both are `Rules::reconcile`.
//!
//! # Hearing from the hub
//!
//! The silent-gateway rule's clock restarts whenever the patient's hub is heard from, on
//! ingest's clock: a batch of their readings arriving (however long ago they were measured: a
//! backlog proves the hub is up now), and a live `online` status from a hub bound to them
//! ([`Rules::gateway_heard`]), which also resolves an open silent-gateway alert. Both advance
//! the gateway's `last_seen_at` in the record, which a rebuild starts the clock from.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rules::{
    Alert, Check, Context, Engine, Event, PatientIdx, Persistence, Profile, ProfileError,
    ProfileIdx, ProfileOverride, RepeatReason, RuleIdx, Ruleset, Timestamp,
};
use serde_json::{Value as Json, json};
use time::OffsetDateTime;
use vitals::{PatientKey, Reading};

use crate::config::RulesConfig;
use crate::record::{AlertWrite, OpenAlert, Record, RecordError, RuleVersion, StoredAlert};

/// Why the rules could not be loaded. The consumer does not start.
#[derive(Debug, thiserror::Error)]
pub enum RulesError {
    /// A directory or file could not be read.
    #[error("{path}: cannot read: {source}")]
    Read {
        /// What.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A profile or override was refused.
    #[error("{path}: {source}")]
    Profile {
        /// The file.
        path: PathBuf,
        /// The engine's reason (rule and field named).
        #[source]
        source: ProfileError,
    },
    /// Two files define the same id.
    #[error("{path}: id `{id}` is already defined by {other}")]
    Duplicate {
        /// The second file.
        path: PathBuf,
        /// The id.
        id: String,
        /// The first file.
        other: PathBuf,
    },
    /// An override names a base profile that is not loaded.
    #[error("{path}: override `{id}` is for profile `{base}`, which is not in {dir}")]
    UnknownBase {
        /// The override file.
        path: PathBuf,
        /// The override id.
        id: String,
        /// Its base.
        base: String,
        /// The profiles directory.
        dir: PathBuf,
    },
    /// The default profile is not among the loaded ones.
    #[error("{dir}: no profile with the default id `{id}` ([rules] default_profile)")]
    NoDefault {
        /// The profiles directory.
        dir: PathBuf,
        /// The id looked for.
        id: String,
    },
}

/// The validated rulesets, by id.
#[derive(Debug)]
struct Profiles {
    sets: Vec<Ruleset>,
    by_id: HashMap<String, usize>,
    default: usize,
    /// The base profiles by id: console-saved thresholds are overrides on them.
    bases: HashMap<String, Profile>,
}

fn toml_files(dir: &Path) -> Result<Vec<PathBuf>, RulesError> {
    let read = |e| RulesError::Read {
        path: dir.to_path_buf(),
        source: e,
    };
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(read)? {
        let path = entry.map_err(read)?.path();
        if path.is_file() && path.extension().is_some_and(|e| e == "toml") {
            files.push(path);
        }
    }
    files.sort();
    Ok(files)
}

fn read_text(path: &Path) -> Result<String, RulesError> {
    std::fs::read_to_string(path).map_err(|e| RulesError::Read {
        path: path.to_path_buf(),
        source: e,
    })
}

impl Profiles {
    fn load(dir: &Path, default: &str) -> Result<Self, RulesError> {
        let mut sets = Vec::new();
        let mut by_id: HashMap<String, usize> = HashMap::new();
        let mut files: Vec<PathBuf> = Vec::new();
        let mut bases: HashMap<String, Profile> = HashMap::new();
        let mut add = |id: &str, set: Ruleset, path: &Path| {
            if let Some(&i) = by_id.get(id) {
                return Err(RulesError::Duplicate {
                    path: path.to_path_buf(),
                    id: id.to_owned(),
                    other: files[i].clone(),
                });
            }
            by_id.insert(id.to_owned(), sets.len());
            sets.push(set);
            files.push(path.to_path_buf());
            Ok(())
        };
        let refused = |path: &Path, source| RulesError::Profile {
            path: path.to_path_buf(),
            source,
        };
        for path in toml_files(dir)? {
            let profile = Profile::from_toml(&read_text(&path)?).map_err(|e| refused(&path, e))?;
            let set = profile.build().map_err(|e| refused(&path, e))?;
            add(&profile.id, set, &path)?;
            bases.insert(profile.id.clone(), profile);
        }
        let overrides = dir.join("overrides");
        if overrides.is_dir() {
            for path in toml_files(&overrides)? {
                let o = ProfileOverride::from_toml(&read_text(&path)?)
                    .map_err(|e| refused(&path, e))?;
                let base = bases.get(&o.base).ok_or_else(|| RulesError::UnknownBase {
                    path: path.clone(),
                    id: o.id.clone(),
                    base: o.base.clone(),
                    dir: dir.to_path_buf(),
                })?;
                let set = base.build_with(&o).map_err(|e| refused(&path, e))?;
                add(&o.id, set, &path)?;
            }
        }
        let default = *by_id.get(default).ok_or_else(|| RulesError::NoDefault {
            dir: dir.to_path_buf(),
            id: default.to_owned(),
        })?;
        Ok(Profiles {
            sets,
            by_id,
            default,
            bases,
        })
    }

    /// The ruleset for a patient (see the module doc).
    fn for_patient(&self, profile_id: Option<&str>, condition: &str) -> usize {
        if let Some(id) = profile_id {
            if let Some(&i) = self.by_id.get(id) {
                return i;
            }
            tracing::warn!(
                profile = id,
                "a patient's profile is not loaded; using the condition's or the default"
            );
        }
        self.by_id
            .get(&condition.to_ascii_lowercase())
            .copied()
            .unwrap_or(self.default)
    }
}

/// How far back a ruleset looks: the replay window of a rebuild.
fn history_window(set: &Ruleset) -> time::Duration {
    const DAY: i64 = 86_400_000;
    let mut ms = DAY;
    for rule in &set.rules {
        let needed = match rule.check {
            Check::BaselineDrop { days, .. } | Check::BestDrop { days, .. } => {
                (i64::from(days) + 1) * DAY
            }
            Check::Missing { within, .. } | Check::SilentGateway { within } => within,
            Check::News2 { fresh, .. } => fresh,
            _ => 0,
        };
        let persistence = match rule.persistence {
            Persistence::MinDuration(ms) => ms,
            Persistence::Confirm { within, .. } => within,
            Persistence::Immediate => 0,
        };
        ms = ms.max(needed).max(persistence);
    }
    time::Duration::milliseconds(ms.min((i64::from(rules::MAX_DAYS) + 1) * DAY))
}

/// A patient this node has met.
#[derive(Debug)]
struct Slot {
    key: PatientKey,
    /// Index into `Profiles::sets`.
    set: usize,
    /// The record's rule version the state matches; `None`: rebuild before use.
    version: Option<i64>,
}

/// The rules engine and what the consumer keeps beside it. Built once at start-up by
/// [`Rules::load`] and handed to [`super::Consumer::run_with`].
#[derive(Debug)]
pub struct Rules {
    engine: Engine,
    profiles: Profiles,
    /// The engine's index of each of `profiles.sets`.
    engine_sets: Vec<ProfileIdx>,
    windows: Vec<time::Duration>,
    /// By `PatientIdx`.
    slots: Vec<Slot>,
    /// How often [`Rules::tick`] runs.
    pub(crate) tick_every: Duration,
    events: Vec<Event>,
    /// Console-saved thresholds built so far: patient → (threshold version, index into
    /// `profiles.sets`).
    saved: HashMap<PatientKey, (i64, usize)>,
}

/// Rollbacks for stale state before a batch is evaluated on the state at hand (another node
/// writing the same patient continuously); keeps a hot patient from starving the consumer.
pub(crate) const MAX_ROLLBACKS: u32 = 4;

impl Rules {
    /// Loads and validates the profiles named in `[rules]`.
    pub fn load(config: &RulesConfig) -> Result<Self, RulesError> {
        let profiles = Profiles::load(&config.profiles_dir, &config.default_profile)?;
        let mut engine = Engine::new();
        let engine_sets = profiles
            .sets
            .iter()
            .map(|s| engine.add_profile(s.clone()))
            .collect();
        let windows = profiles.sets.iter().map(history_window).collect();
        tracing::info!(
            profiles = profiles.sets.len(),
            dir = %config.profiles_dir.display(),
            "threshold profiles loaded"
        );
        Ok(Rules {
            engine,
            profiles,
            engine_sets,
            windows,
            slots: Vec::new(),
            tick_every: config.tick_every,
            events: Vec::with_capacity(16),
            saved: HashMap::new(),
        })
    }

    /// Whether the patient's state can be used as it is.
    pub(crate) fn is_current(&self, key: &PatientKey) -> bool {
        self.engine
            .patient_index(key)
            .and_then(|i| self.slots.get(i.0 as usize))
            .is_some_and(|s| s.version.is_some())
    }

    /// Patients whose state must be rebuilt before use.
    pub(crate) fn stale(&self) -> Vec<PatientKey> {
        self.slots
            .iter()
            .filter(|s| s.version.is_none())
            .map(|s| s.key.clone())
            .collect()
    }

    /// Throws the patients' state away: rebuilt before next use.
    pub(crate) fn discard<'a>(&mut self, keys: impl IntoIterator<Item = &'a PatientKey>) {
        for key in keys {
            if let Some(i) = self.engine.patient_index(key)
                && let Some(s) = self.slots.get_mut(i.0 as usize)
            {
                s.version = None;
            }
        }
    }

    /// Rebuilds one patient's state from the record (enrolling them on first sight).
    /// `Ok(false)`: the patient is not in the registry, so is not evaluated.
    pub(crate) async fn rebuild(
        &mut self,
        record: &Record,
        key: &PatientKey,
        now: OffsetDateTime,
    ) -> Result<bool, RecordError> {
        let Some(patient) = record.patient(key).await? else {
            return Ok(false);
        };
        let mut set = self
            .profiles
            .for_patient(patient.profile_id.as_deref(), &patient.condition);
        // Thresholds saved in the console win over the files. Saving one bumps the patient's
        // rule version, so every node finds its state stale and comes through here.
        if let Some(saved) = record.current_thresholds(key).await? {
            match self.saved_set(key, &saved) {
                Ok(i) => set = i,
                Err(e) => tracing::error!(
                    version = saved.version,
                    error = %e,
                    "saved thresholds do not build; using the profile files"
                ),
            }
        }
        // The version first: readings stored after it make the state newer than it says,
        // which at worst costs one more rebuild, never a missed reading.
        let version = record.rule_version(key).await?;
        let from = now - self.windows[set];
        let to = now + time::Duration::days(1);
        let readings = record.readings_to_replay(key, from, to).await?;
        // Replay hears the hub only at the readings' measured times; statuses and uploads
        // it received since (a backlog, or no readings at all) are in `last_seen_at`.
        let heard = record.patient_gateways_heard(key, now).await?;
        // A known patient whose ruleset changed (thresholds saved in the console): after the
        // replay, alerts the new thresholds hold open must also be open in the record.
        let mut changed = false;
        let idx = match self.engine.patient_index(key) {
            Some(idx) => {
                let slot = &mut self.slots[idx.0 as usize];
                if slot.set != set {
                    changed = true;
                    slot.set = set;
                    self.engine
                        .set_profile(idx, self.engine_sets[set])
                        .map_err(engine_bug)?;
                }
                idx
            }
            None => {
                let idx = self
                    .engine
                    .add_patient(
                        key.clone(),
                        self.engine_sets[set],
                        Timestamp::from(patient.created_at),
                    )
                    .map_err(engine_bug)?;
                debug_assert_eq!(idx.0 as usize, self.slots.len());
                self.slots.push(Slot {
                    key: key.clone(),
                    set,
                    version: None,
                });
                idx
            }
        };
        let replayed = self.engine.rebuild(idx, &readings).map_err(engine_bug)?;
        if let Some(heard) = heard {
            // Replay raises nothing, and after it no time-driven alert is open for this to
            // resolve: the events (none) are dropped like the replay's.
            self.events.clear();
            self.engine
                .gateway_heard(idx, Timestamp::from(heard), &mut self.events)
                .map_err(engine_bug)?;
            self.events.clear();
        }
        self.reconcile(record, key, idx, now, changed).await?;
        self.slots[idx.0 as usize].version = Some(version);
        tracing::debug!(patient = %key, replayed, version, "rules state rebuilt");
        Ok(true)
    }

    /// After a replay: makes the engine's open alerts and the record's agree. Replay raises
    /// nothing (so a restart does not raise twice), which leaves two gaps:
    ///
    /// - Alerts the tick raises (missing data, silent gateway, a confirmation nobody made)
    ///   are not open in the replayed state. Those the record holds open are handed to
    ///   [`Engine::settle`]: still due at `now`, the engine holds them open too and nothing is
    ///   written (the next tick does not raise them again, and the next reading of the kind
    ///   or sign of the hub resolves them); no longer due (the hub was heard or the kind
    ///   measured while this node was not evaluating, or the window changed), they are
    ///   resolved in the record now. Several nodes may do this for the same alert: the first
    ///   resolve closes it, the others find nothing open and store nothing. What is due and
    ///   not in the record is left to the next tick, which raises it as before.
    /// - Under changed thresholds (`changed`), the readings already stored can breach the new
    ///   ones: without raising them, the engine would consider that alert open, and later
    ///   readings would only "update" an alert nobody was ever told about. So every alert the
    ///   engine holds open that the record has no open alert for is raised. Alerts open in
    ///   the record that the new thresholds no longer hold stay open until a nurse deals with
    ///   them.
    async fn reconcile(
        &mut self,
        record: &Record,
        key: &PatientKey,
        idx: PatientIdx,
        now: OffsetDateTime,
        changed: bool,
    ) -> Result<(), RecordError> {
        let in_record: Vec<StoredAlert> = record.open_alerts_for_patient(key).await?;
        let recorded: Vec<(RuleIdx, Timestamp)> = in_record
            .iter()
            .filter_map(|a| {
                let rule = self.engine.rule_index(idx, &a.rule)?;
                Some((rule, Timestamp::from(a.opened_at)))
            })
            .collect();
        self.events.clear();
        self.engine
            .settle(idx, Timestamp::from(now), &recorded, &mut self.events)
            .map_err(engine_bug)?;
        // Only resolves: settling raises nothing new.
        let mut writes: Vec<AlertWrite> = self
            .events
            .iter()
            .filter_map(|e| self.write_for(idx, e))
            .collect();
        self.events.clear();
        let resolved = writes.len();
        if changed {
            let open: Vec<Alert> = self.engine.open_alerts(idx).copied().collect();
            writes.extend(
                open.iter()
                    .filter_map(|a| self.write_for(idx, &Event::Raised(*a)))
                    .filter(|w| match w {
                        AlertWrite::Open { alert, .. } => {
                            !in_record.iter().any(|a| a.rule == alert.rule)
                        }
                        _ => false,
                    }),
            );
        }
        if !writes.is_empty() {
            record.write_alerts(&writes).await?;
            tracing::info!(
                resolved,
                raised = writes.len() - resolved,
                "alerts reconciled with the record after rebuilding a patient's state"
            );
        }
        Ok(())
    }

    /// The ruleset of a console-saved threshold version, built once per version.
    fn saved_set(
        &mut self,
        key: &PatientKey,
        saved: &crate::record::ThresholdVersion,
    ) -> Result<usize, String> {
        if let Some(&(version, i)) = self.saved.get(key)
            && version == saved.version
        {
            return Ok(i);
        }
        let base = self
            .profiles
            .bases
            .get(&saved.base_profile)
            .ok_or_else(|| format!("base profile `{}` is not loaded", saved.base_profile))?;
        let set = crate::console::thresholds::build_saved(base, saved)?;
        let i = self.profiles.sets.len();
        self.windows.push(history_window(&set));
        self.engine_sets.push(self.engine.add_profile(set.clone()));
        self.profiles.sets.push(set);
        self.saved.insert(key.clone(), (saved.version, i));
        Ok(i)
    }

    /// The batch transaction's callback: checks versions, then evaluates the new readings in
    /// measurement order, then tells the engine each of their patients' hubs was heard at
    /// `received` (ingest's clock: a backlog of old readings still proves the hub is up now).
    /// `None` (roll back) when some patient's state is stale, unless `force`.
    pub(crate) fn evaluate(
        &mut self,
        new: &[&Reading],
        versions: &[RuleVersion],
        force: bool,
        received: OffsetDateTime,
        latency: &super::latency::LatencyHistogram,
    ) -> Option<Vec<AlertWrite>> {
        // The batch's patients (one version each) whom this node has enrolled; those not in
        // the registry are stored, not evaluated.
        let enrolled: Vec<(PatientIdx, i64)> = versions
            .iter()
            .filter_map(|v| Some((self.engine.patient_index(&v.patient)?, v.version)))
            .collect();
        let stale: Vec<PatientIdx> = enrolled
            .iter()
            .filter(|(i, v)| self.slots[i.0 as usize].version != Some(v - 1))
            .map(|(i, _)| *i)
            .collect();
        if !stale.is_empty() && !force {
            for i in stale {
                self.slots[i.0 as usize].version = None;
            }
            return None;
        }
        for &(i, v) in &enrolled {
            self.slots[i.0 as usize].version = Some(v);
        }
        let mut order: Vec<(PatientIdx, &Reading)> = new
            .iter()
            .filter_map(|r| Some((self.engine.patient_index(&r.patient)?, *r)))
            .collect();
        order.sort_by_key(|(_, r)| r.measured_at);
        // At once, so that the engine fetches the next readings' patients' state together
        // (`Engine::evaluate_batch`). The histogram counts each reading at the batch's mean.
        self.events.clear();
        let started = std::time::Instant::now();
        let evaluated = self.engine.evaluate_readings(&order, &mut self.events);
        if let Some(each) = started.elapsed().checked_div(order.len().max(1) as u32) {
            latency.record_n(each, order.len() as u64);
        }
        if let Err(e) = evaluated {
            // Only an index the engine does not know, which `patient_index` just gave: a bug,
            // and nothing of the batch was evaluated.
            tracing::error!(error = %e, "rules engine refused a batch");
        }
        let mut writes = Vec::new();
        for event in &self.events {
            writes.extend(self.write_for(event.patient(), event));
        }
        // Their hubs were heard now (`versions` holds each patient of the batch once).
        let received = Timestamp::from(received);
        for (idx, _) in enrolled {
            self.events.clear();
            if let Err(e) = self.engine.gateway_heard(idx, received, &mut self.events) {
                tracing::error!(error = %e, "rules engine refused a gateway heard");
                continue;
            }
            for i in 0..self.events.len() {
                let event = self.events[i];
                writes.extend(self.write_for(idx, &event));
            }
        }
        Some(writes)
    }

    /// Runs time-driven rules at `now`. Returns the writes and the patients they concern with
    /// the version their state was built at (to check before storing).
    pub(crate) fn tick(&mut self, now: OffsetDateTime) -> Vec<(PatientKey, i64, AlertWrite)> {
        self.events.clear();
        self.engine.tick(Timestamp::from(now), &mut self.events);
        let mut out = Vec::new();
        self.versioned_writes(&mut out);
        out
    }

    /// A gateway was heard from at `at` (ingest's clock; a live status message): each of
    /// `patients` (those bound to it then, [`Record::patients_on_gateway`]) whom this node has
    /// enrolled heard it then, which resolves an open silent-gateway alert and restarts the
    /// rule's clock. Returns what to store, as [`Rules::tick`] does.
    pub(crate) fn gateway_heard(
        &mut self,
        patients: &[PatientKey],
        at: OffsetDateTime,
    ) -> Vec<(PatientKey, i64, AlertWrite)> {
        let at = Timestamp::from(at);
        self.events.clear();
        for key in patients {
            // Not enrolled yet: enrolled from the record, `last_seen_at` included.
            if let Some(idx) = self.engine.patient_index(key)
                && let Err(e) = self.engine.gateway_heard(idx, at, &mut self.events)
            {
                tracing::error!(error = %e, "rules engine refused a gateway heard");
            }
        }
        let mut out = Vec::new();
        self.versioned_writes(&mut out);
        out
    }

    /// The record's form of `self.events` outside a batch transaction, each with its
    /// patient and the rule version their state was built at (to check before storing).
    fn versioned_writes(&self, out: &mut Vec<(PatientKey, i64, AlertWrite)>) {
        for event in &self.events {
            let idx = event.patient();
            let Some(slot) = self.slots.get(idx.0 as usize) else {
                continue;
            };
            // Stale state ticks on old last-seen times: it is rebuilt before it speaks.
            let Some(version) = slot.version else {
                continue;
            };
            if let Some(w) = self.write_for(idx, event) {
                out.push((slot.key.clone(), version, w));
            }
        }
    }

    /// Enrols every registered patient (start-up), so time-driven rules cover them all.
    pub(crate) async fn enrol_all(
        &mut self,
        record: &Record,
        now: OffsetDateTime,
    ) -> Result<usize, RecordError> {
        let mut n = 0;
        for p in record.list_patients().await? {
            if !self.is_current(&p.key) && self.rebuild(record, &p.key, now).await? {
                n += 1;
            }
        }
        Ok(n)
    }

    /// The record's form of one engine event.
    fn write_for(&self, idx: PatientIdx, event: &Event) -> Option<AlertWrite> {
        let slot = self.slots.get(idx.0 as usize)?;
        let patient = slot.key.clone();
        match event {
            Event::Raised(a) | Event::Updated(a) => {
                let text = self.engine.describe(a)?;
                Some(AlertWrite::Open {
                    patient,
                    raised: matches!(event, Event::Raised(_)),
                    alert: OpenAlert {
                        rule: text.rule,
                        profile: text.profile,
                        severity: a.severity,
                        audience: a.audience,
                        opened_at: a.opened_at.to_datetime(),
                        at: a.at.to_datetime(),
                        explanation: explanation(a, &text.explanation),
                        nurse: text.nurse,
                        patient_text: text.patient,
                    },
                })
            }
            Event::Resolved(a) => {
                let text = self.engine.describe(a)?;
                Some(AlertWrite::Resolve {
                    patient,
                    rule: text.rule,
                    at: a.at.to_datetime(),
                    payload: explanation(a, &text.explanation),
                })
            }
            Event::RepeatRequested(r) => {
                let mut payload = json!({
                    "reading": r.reading.to_string(),
                    "patient_text": r.reason.patient_message(),
                });
                match r.reason {
                    RepeatReason::DeviceQuality(flags) => {
                        payload["reason"] = json!("device_quality");
                        payload["flags"] = flags.iter().map(|f| f.as_str()).collect();
                    }
                    RepeatReason::Confirm(rule) => {
                        payload["reason"] = json!("confirm");
                        let set = self.engine.profile(self.engine_sets[slot.set])?;
                        payload["rule"] = json!(set.rules.get(usize::from(rule.0))?.id);
                    }
                }
                Some(AlertWrite::Repeat {
                    patient,
                    at: r.at.to_datetime(),
                    payload,
                })
            }
        }
    }
}

/// The engine refused its own indices: a bug here, reported as a record-side invariant.
fn engine_bug(e: rules::EngineError) -> RecordError {
    RecordError::Invalid(format!("rules engine: {e}"))
}

/// The explanation stored with an alert: the evidence (reading ids, times, values), the
/// figures compared, and the engine's one-line text.
fn explanation(a: &Alert, text: &str) -> Json {
    let evidence: Vec<Json> = a
        .evidence
        .iter()
        .map(|e| {
            json!({
                "reading": e.reading.to_string(),
                "at": e.at.millis(),
                "kind": e.kind.as_str(),
                "value": e.value,
            })
        })
        .collect();
    let context = match a.context {
        Context::Threshold { limit, clear } => {
            json!({"type": "threshold", "limit": limit, "clear": clear})
        }
        Context::Baseline {
            baseline,
            drop,
            days,
        } => json!({"type": "baseline", "baseline": baseline, "drop": drop, "days": days}),
        Context::PersonalBest { best, drop_percent } => {
            json!({"type": "personal_best", "best": best, "drop_percent": drop_percent})
        }
        Context::Trend { mean, sd, limit } => {
            json!({"type": "trend", "mean": mean, "sd": sd, "limit": limit})
        }
        Context::Cusum {
            sum,
            limit,
            mean,
            sd,
        } => json!({"type": "cusum", "sum": sum, "limit": limit, "mean": mean, "sd": sd}),
        Context::Missing {
            kind,
            last_seen,
            within,
        } => json!({"type": "missing", "kind": kind.as_str(), "last_seen": last_seen.millis(),
                    "within_ms": within}),
        Context::SilentGateway { last_heard, within } => {
            json!({"type": "silent_gateway", "last_heard": last_heard.millis(), "within_ms": within})
        }
        Context::News2(s) => json!({"type": "news2", "score": s.total,
                                    "response": s.response.as_str(), "partial": true}),
    };
    json!({
        "severity": a.severity.as_str(),
        "evidence": evidence,
        "context": context,
        "text": text,
    })
}
