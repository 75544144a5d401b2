//! The simulator in the browser.
//!
//! `saldo-harness` wraps [`saldo_sim::Player`] for JavaScript with
//! wasm-bindgen: load a walkthrough, a seeded run, a hand-written scenario
//! or a trace file; step, run, play and pause; step back; inject a fault at
//! the current step; read a snapshot of every table; export the trace. A
//! trace file can also be a production order's recording (`saldo admin
//! export`), which [`saldo_sim::recorded::RecordedPlayer`] replays with the
//! same controls and views.
//! Values cross the boundary as JSON text, which the page parses: one
//! format, the same as the trace files and the HTTP API.
//!
//! Nothing here decides anything: the simulator runs the production
//! deciders, and [`narrate`] only puts its events into words.

pub mod narrate;

use saldo_sim::recorded::{self, RecordedPlayer};
use saldo_sim::replay::{REPLAY_ORDERS_MAX, Source};
use saldo_sim::sim::StepOutcome;
use saldo_sim::trace::TraceRecord;
use saldo_sim::{Fault, Player, Profile, Scenario, SimConfig};
use serde_json::{Value, json};
use wasm_bindgen::prelude::*;

fn error(error: impl std::fmt::Display) -> JsError {
    JsError::new(&error.to_string())
}

fn record_view(record: &TraceRecord) -> Value {
    let mut value = serde_json::to_value(record).expect("records serialise");
    let narration = narrate::narrate(record);
    value["what"] = json!(narration.what);
    value["why"] = json!(narration.why);
    value
}

fn profile(name: &str) -> Result<Profile, JsError> {
    Profile::from_name(name).ok_or_else(|| {
        error(format!(
            "unknown fault profile {name:?}; choose none, light, heavy or chaos"
        ))
    })
}

/// The built-in walkthroughs as JSON: name, title, summary, the expected
/// endings and the scenario itself.
#[wasm_bindgen]
pub fn walkthroughs() -> String {
    serde_json::to_string(&saldo_sim::walkthroughs()).expect("walkthroughs serialise")
}

/// The trace hash of a seeded run, computed without keeping the trace: the
/// value `saldo sim --seed S --orders N --faults P` prints natively.
#[wasm_bindgen]
pub fn seeded_trace_hash(seed: u64, orders: u32, faults: &str) -> Result<String, JsError> {
    if orders == 0 || orders > saldo_sim::config::ORDERS_MAX {
        return Err(error(format!(
            "orders must be from 1 to {}",
            saldo_sim::config::ORDERS_MAX
        )));
    }
    let config = SimConfig::new(seed, orders, profile(faults)?);
    Ok(saldo_sim::run(config, false).trace_hash)
}

/// What the page steps through.
enum Run {
    /// A simulated run (walkthrough, seed, scenario or simulator trace).
    Simulated(Box<Player>),
    /// A production order's recording, replayed.
    Recorded(Box<RecordedPlayer>),
}

/// One run in the browser.
#[wasm_bindgen]
pub struct Harness {
    run: Run,
    playing: bool,
}

#[wasm_bindgen]
impl Harness {
    /// A built-in walkthrough, at its start.
    pub fn walkthrough(name: &str) -> Result<Harness, JsError> {
        let walkthrough = saldo_sim::walkthrough(name)
            .ok_or_else(|| error(format!("no walkthrough is called {name:?}")))?;
        Harness::start(Source::Scenario(walkthrough.scenario))
    }

    /// A run drawn from a seed, as `saldo sim` runs it (at most
    /// [`REPLAY_ORDERS_MAX`] orders: every event is kept for the page).
    pub fn seeded(seed: u64, orders: u32, faults: &str) -> Result<Harness, JsError> {
        if orders == 0 || orders > REPLAY_ORDERS_MAX {
            return Err(error(format!(
                "a run in the page has from 1 to {REPLAY_ORDERS_MAX} orders, not {orders}"
            )));
        }
        Harness::start(Source::Seeded(SimConfig::new(
            seed,
            orders,
            profile(faults)?,
        )))
    }

    /// A scenario written by hand, as JSON.
    pub fn scenario(json: &str) -> Result<Harness, JsError> {
        let scenario: Scenario = serde_json::from_str(json).map_err(error)?;
        Harness::start(Source::Scenario(scenario))
    }

    /// A trace file (from `saldo sim --trace` or an export), replayed and
    /// checked event by event, positioned at its start.
    pub fn import_trace(text: &str) -> Result<Harness, JsError> {
        let run = if recorded::is_recording(text) {
            Run::Recorded(Box::new(RecordedPlayer::import(text).map_err(error)?))
        } else {
            Run::Simulated(Box::new(Player::import(text).map_err(error)?))
        };
        Ok(Harness {
            run,
            playing: false,
        })
    }

    fn start(source: Source) -> Result<Harness, JsError> {
        Ok(Harness {
            run: Run::Simulated(Box::new(Player::new(source).map_err(error)?)),
            playing: false,
        })
    }

    /// True when the run is a production order's recording.
    pub fn recorded(&self) -> bool {
        matches!(self.run, Run::Recorded(_))
    }

    fn records(&self) -> &[TraceRecord] {
        match &self.run {
            Run::Simulated(player) => player.simulation().trace().records().unwrap_or_default(),
            Run::Recorded(player) => player.trace().records().unwrap_or_default(),
        }
    }

    fn running(&self) -> bool {
        match &self.run {
            Run::Simulated(player) => player.outcome() == StepOutcome::Running,
            Run::Recorded(player) => !player.finished(),
        }
    }

    /// Steps taken (inputs replayed, for a recording).
    pub fn position(&self) -> u64 {
        match &self.run {
            Run::Simulated(player) => player.position(),
            Run::Recorded(player) => player.position(),
        }
    }

    /// `running`, `quiescent` or `violated`; a recording is `running`
    /// until its last input, then `ended`.
    pub fn state(&self) -> String {
        match &self.run {
            Run::Simulated(player) => player.outcome().name().to_owned(),
            Run::Recorded(player) if player.finished() => "ended".to_owned(),
            Run::Recorded(_) => "running".to_owned(),
        }
    }

    /// The trace hash of the events so far.
    pub fn trace_hash(&self) -> String {
        match &self.run {
            Run::Simulated(player) => player.simulation().trace().hash_hex(),
            Run::Recorded(player) => player.trace().hash_hex(),
        }
    }

    /// Takes one step; returns the state.
    pub fn step(&mut self) -> Result<String, JsError> {
        match &mut self.run {
            Run::Simulated(player) => {
                player.step().map_err(error)?;
            }
            Run::Recorded(player) => {
                player.step();
            }
        }
        Ok(self.state())
    }

    /// Steps until something happens (a step that records an event) or the
    /// run ends; returns the state.
    pub fn next_event(&mut self) -> Result<String, JsError> {
        let events = self.event_count();
        while self.running() {
            self.step()?;
            if self.event_count() > events {
                break;
            }
        }
        Ok(self.state())
    }

    /// Goes back to just after the previous step that recorded an event
    /// (or to the start); returns the new position.
    pub fn back(&mut self) -> Result<u64, JsError> {
        let position = self.position();
        let target = self
            .records()
            .iter()
            .rev()
            .map(|record| record.step)
            .find(|step| *step < position)
            .unwrap_or(0);
        self.seek(target)?;
        Ok(self.position())
    }

    /// Moves to the point after `step` steps, forwards or backwards.
    pub fn seek(&mut self, step: u64) -> Result<String, JsError> {
        match &mut self.run {
            Run::Simulated(player) => {
                player.seek(step).map_err(error)?;
            }
            Run::Recorded(player) => player.seek(step),
        }
        Ok(self.state())
    }

    /// Runs at most `steps` steps; returns the state.
    pub fn run(&mut self, steps: u32) -> Result<String, JsError> {
        match &mut self.run {
            Run::Simulated(player) => {
                player.run(u64::from(steps)).map_err(error)?;
            }
            Run::Recorded(player) => {
                for _ in 0..steps {
                    if !player.step() {
                        break;
                    }
                }
            }
        }
        Ok(self.state())
    }

    /// Runs to the end; returns the state.
    pub fn run_to_end(&mut self) -> Result<String, JsError> {
        match &mut self.run {
            Run::Simulated(player) => {
                player.run_to_end().map_err(error)?;
            }
            Run::Recorded(player) => player.run_to_end(),
        }
        self.playing = false;
        Ok(self.state())
    }

    /// Starts playing: each [`Harness::tick`] then advances to the next event.
    pub fn play(&mut self) {
        self.playing = self.running();
    }

    /// Stops playing.
    pub fn pause(&mut self) {
        self.playing = false;
    }

    /// True while playing.
    pub fn playing(&self) -> bool {
        self.playing
    }

    /// While playing, advances to the next event; stops at the end. Returns
    /// whether it is still playing.
    pub fn tick(&mut self) -> Result<bool, JsError> {
        if self.playing {
            self.next_event()?;
            self.playing = self.running();
        }
        Ok(self.playing)
    }

    /// Injects a fault (JSON, e.g. `{"kind":"crash_before_ack","service":"payment"}`)
    /// at the current step.
    pub fn inject(&mut self, fault: &str) -> Result<(), JsError> {
        let fault: Fault = serde_json::from_str(fault).map_err(error)?;
        match &mut self.run {
            Run::Simulated(player) => player.inject(fault).map_err(error),
            Run::Recorded(_) => Err(error(
                "a production order replays what happened to it; faults can be injected only into simulated runs",
            )),
        }
    }

    /// Every table, the broker, the ledger and the invariants, as JSON.
    pub fn snapshot(&self) -> String {
        match &self.run {
            Run::Simulated(player) => saldo_sim::view::snapshot(player.simulation()).to_string(),
            Run::Recorded(player) => saldo_sim::view::recorded_snapshot(player).to_string(),
        }
    }

    /// The recorded events from index `from` on, each with its narration, as JSON.
    pub fn events(&self, from: u32) -> String {
        let records = self.records();
        let from = (from as usize).min(records.len());
        Value::Array(records[from..].iter().map(record_view).collect()).to_string()
    }

    /// How many events are recorded so far.
    pub fn event_count(&self) -> u32 {
        u32::try_from(self.records().len()).unwrap_or(u32::MAX)
    }

    /// The trace file so far (header and events), to save and import
    /// later; a recording exports as it was imported.
    pub fn export_trace(&self) -> String {
        match &self.run {
            Run::Simulated(player) => player.export(),
            Run::Recorded(player) => recorded::export(player.story()),
        }
    }

    /// How an imported trace compared with its replay, as JSON (`null`
    /// when the run was not imported, or was changed by an injection).
    pub fn verification(&self) -> String {
        match &self.run {
            Run::Simulated(player) => match player.verification() {
                Some(verification) => json!({
                    "exact": verification.exact(),
                    "recorded": verification.recorded,
                    "replayed": verification.replayed,
                    "identical": verification.identical,
                    "first_difference": verification.first_difference,
                    "trace_hash": verification.trace_hash,
                })
                .to_string(),
                None => "null".to_owned(),
            },
            Run::Recorded(player) => {
                let verification = player.verification();
                json!({
                    "exact": verification.exact(),
                    "recorded": verification.recorded,
                    "replayed": verification.replayed,
                    "identical": verification.identical,
                    "first_difference": verification.differences.first().map(|difference| {
                        json!([
                            { "step": difference.step, "what": difference.what, "message": difference.recorded },
                            { "step": difference.step, "what": difference.what, "message": difference.replayed },
                        ])
                    }),
                    "differences": verification.differences,
                    "trace_hash": verification.trace_hash,
                    "order_id": player.order_id(),
                })
                .to_string()
            }
        }
    }

    /// The header that reproduces the run, as JSON.
    pub fn header(&self) -> String {
        match &self.run {
            Run::Simulated(player) => {
                serde_json::to_string(player.header()).expect("the header serialises")
            }
            Run::Recorded(player) => recorded::export(player.story()).trim_end().to_owned(),
        }
    }
}
