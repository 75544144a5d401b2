//! Exact replay: a trace file reproduces its run, and a [`Player`] steps
//! through a run forwards and backwards.
//!
//! A trace file is JSON lines. The first line is a [`TraceHeader`]: where
//! the run's world came from (a seed and configuration, or a scenario) and
//! the faults injected by hand, each with the step before which it was
//! injected. Every other line is a [`TraceRecord`]. Because the simulator is
//! deterministic, the header alone reproduces the run; the records are what
//! the replay is checked against, event by event.
//!
//! Stepping backwards is replaying forwards: the [`Player`] rebuilds the run
//! from its header and steps to the wanted point. Runs the player holds are
//! small enough (at most [`REPLAY_ORDERS_MAX`] orders) for that to be
//! instant.

use serde::{Deserialize, Serialize};

use crate::config::{ORDERS_MAX, SimConfig};
use crate::fault::{Fault, FaultError};
use crate::scenario::{Scenario, ScenarioError};
use crate::sim::{Handlers, Simulation, StepOutcome};
use crate::trace::TraceRecord;

/// The trace-file format this build writes and reads.
pub const TRACE_FORMAT: u32 = 1;

/// The largest seeded run a [`Player`] holds (each step's records stay in memory).
pub const REPLAY_ORDERS_MAX: u32 = 5_000;

/// Where a run's world came from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    /// Drawn from a seed (`saldo sim`).
    Seeded(SimConfig),
    /// Given by hand.
    Scenario(Scenario),
}

/// A fault injected by hand before step `step + 1` (so after `step` steps).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Injection {
    /// Steps taken when it was injected.
    pub step: u64,
    /// The fault.
    pub fault: Fault,
}

/// The first line of a trace file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TraceHeader {
    /// The format, [`TRACE_FORMAT`].
    pub saldo_trace: u32,
    /// The world.
    pub source: Source,
    /// Faults injected by hand, in order.
    #[serde(default)]
    pub injections: Vec<Injection>,
}

impl TraceHeader {
    /// A header in the current format.
    pub fn new(source: Source, injections: Vec<Injection>) -> TraceHeader {
        TraceHeader {
            saldo_trace: TRACE_FORMAT,
            source,
            injections,
        }
    }
}

/// Why a trace or a configuration cannot be replayed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReplayError {
    /// The file has no lines.
    #[error("the trace is empty")]
    Empty,
    /// A line is not what it should be.
    #[error("line {line}: {reason}")]
    Line {
        /// The line number, from 1.
        line: usize,
        /// What is wrong.
        reason: String,
    },
    /// Written by another format.
    #[error("trace format {0} is not supported (this build reads {TRACE_FORMAT})")]
    Format(u32),
    /// The seeded configuration is out of bounds.
    #[error("{0}")]
    Config(String),
    /// The scenario cannot run.
    #[error(transparent)]
    Scenario(#[from] ScenarioError),
    /// An injection is invalid.
    #[error("injection {index}: {source}")]
    Injection {
        /// Its position in the header.
        index: usize,
        /// What is wrong.
        source: FaultError,
    },
}

/// A parsed trace file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceFile {
    /// The header.
    pub header: TraceHeader,
    /// The recorded events.
    pub records: Vec<TraceRecord>,
}

impl TraceFile {
    /// Parses a trace file's text.
    pub fn parse(text: &str) -> Result<TraceFile, ReplayError> {
        let mut lines = text
            .lines()
            .enumerate()
            .filter(|(_, line)| !line.trim().is_empty());
        let (_, first) = lines.next().ok_or(ReplayError::Empty)?;
        let header: TraceHeader =
            serde_json::from_str(first).map_err(|error| ReplayError::Line {
                line: 1,
                reason: format!(
                    "not a trace header ({error}); was it written by `saldo sim --trace`?"
                ),
            })?;
        if header.saldo_trace != TRACE_FORMAT {
            return Err(ReplayError::Format(header.saldo_trace));
        }
        let records = lines
            .map(|(index, line)| {
                serde_json::from_str(line).map_err(|error| ReplayError::Line {
                    line: index + 1,
                    reason: error.to_string(),
                })
            })
            .collect::<Result<Vec<TraceRecord>, ReplayError>>()?;
        Ok(TraceFile { header, records })
    }
}

/// How a replay compares with the recording it replays.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Verification {
    /// Events in the recording.
    pub recorded: u64,
    /// Events the replay produced.
    pub replayed: u64,
    /// Leading events that are identical.
    pub identical: u64,
    /// The first event that differs, if any: the recorded one and the replayed one.
    pub first_difference: Option<(TraceRecord, TraceRecord)>,
    /// The replay's trace hash.
    pub trace_hash: String,
}

impl Verification {
    /// True when every event is identical and neither run is longer.
    pub fn exact(&self) -> bool {
        self.first_difference.is_none() && self.recorded == self.replayed
    }
}

/// A run to step through, forwards and backwards, with faults injected at
/// any step.
pub struct Player {
    header: TraceHeader,
    simulation: Simulation,
    applied: usize,
    verification: Option<Verification>,
}

fn check_source(source: &Source) -> Result<(), ReplayError> {
    match source {
        Source::Seeded(config) => {
            if config.orders == 0 || config.orders > REPLAY_ORDERS_MAX.min(ORDERS_MAX) {
                return Err(ReplayError::Config(format!(
                    "a replayed run has from 1 to {REPLAY_ORDERS_MAX} orders, not {}",
                    config.orders
                )));
            }
            if !(1..=64).contains(&config.partitions) {
                return Err(ReplayError::Config(format!(
                    "partitions must be from 1 to 64, not {}",
                    config.partitions
                )));
            }
            if !(1..=1_000).contains(&config.publish_batch_max) {
                return Err(ReplayError::Config(format!(
                    "publish_batch_max must be from 1 to 1000, not {}",
                    config.publish_batch_max
                )));
            }
            Ok(())
        }
        Source::Scenario(scenario) => Ok(scenario.validate()?),
    }
}

fn start(source: &Source) -> Result<Simulation, ReplayError> {
    Ok(match source {
        Source::Seeded(config) => Simulation::new(config.clone(), Handlers::REAL, true),
        Source::Scenario(scenario) => Simulation::from_scenario(scenario, true)?,
    })
}

impl Player {
    /// A player at the start of the run `source` describes.
    pub fn new(source: Source) -> Result<Player, ReplayError> {
        Player::from_header(TraceHeader::new(source, Vec::new()))
    }

    /// A player for a header (a run and its injections).
    pub fn from_header(header: TraceHeader) -> Result<Player, ReplayError> {
        check_source(&header.source)?;
        for (index, injection) in header.injections.iter().enumerate() {
            injection
                .fault
                .validate()
                .map_err(|source| ReplayError::Injection { index, source })?;
        }
        let simulation = start(&header.source)?;
        let mut player = Player {
            header,
            simulation,
            applied: 0,
            verification: None,
        };
        player.apply_due()?;
        Ok(player)
    }

    /// A player for a trace file: replays the whole run once, compares it
    /// with the recording event by event, then goes back to the start. A
    /// file with a header and no events (a scenario written by hand) just
    /// starts its run; there is nothing to compare.
    pub fn import(text: &str) -> Result<Player, ReplayError> {
        let file = TraceFile::parse(text)?;
        let mut player = Player::from_header(file.header)?;
        if file.records.is_empty() {
            return Ok(player);
        }
        player.run_to_end()?;
        let replayed = player.simulation.trace().records().unwrap_or_default();
        let identical = file
            .records
            .iter()
            .zip(replayed)
            .take_while(|(recorded, replayed)| recorded == replayed)
            .count();
        let first_difference = file
            .records
            .get(identical)
            .zip(replayed.get(identical))
            .map(|(recorded, replayed)| (recorded.clone(), replayed.clone()));
        player.verification = Some(Verification {
            recorded: file.records.len() as u64,
            replayed: replayed.len() as u64,
            identical: identical as u64,
            first_difference,
            trace_hash: player.simulation.trace().hash_hex(),
        });
        player.seek(0)?;
        Ok(player)
    }

    fn apply_due(&mut self) -> Result<(), ReplayError> {
        let steps = self.simulation.stats().steps;
        while let Some(injection) = self.header.injections.get(self.applied) {
            if injection.step != steps {
                break;
            }
            self.simulation
                .inject(injection.fault)
                .map_err(|source| ReplayError::Injection {
                    index: self.applied,
                    source,
                })?;
            self.applied += 1;
        }
        Ok(())
    }

    /// The run as it stands.
    pub fn simulation(&self) -> &Simulation {
        &self.simulation
    }

    /// The header that reproduces the run (with every injection so far).
    pub fn header(&self) -> &TraceHeader {
        &self.header
    }

    /// Steps taken.
    pub fn position(&self) -> u64 {
        self.simulation.stats().steps
    }

    /// How an imported trace compared with its replay.
    pub fn verification(&self) -> Option<&Verification> {
        self.verification.as_ref()
    }

    /// Takes one step, then injects what was injected after it.
    pub fn step(&mut self) -> Result<StepOutcome, ReplayError> {
        let outcome = self.simulation.step();
        self.apply_due()?;
        Ok(outcome)
    }

    /// Steps until the run ends or `steps` more steps were taken.
    pub fn run(&mut self, steps: u64) -> Result<StepOutcome, ReplayError> {
        let mut outcome = self.outcome();
        for _ in 0..steps {
            outcome = self.step()?;
            if outcome != StepOutcome::Running {
                break;
            }
        }
        Ok(outcome)
    }

    /// Steps to the end of the run.
    pub fn run_to_end(&mut self) -> Result<StepOutcome, ReplayError> {
        self.run(u64::MAX)
    }

    /// Where the run stands: running, quiescent or violated.
    pub fn outcome(&self) -> StepOutcome {
        self.simulation.outcome()
    }

    /// Moves to the point after `step` steps (or to the end, if the run is
    /// shorter): forwards by stepping, backwards by replaying from the start.
    pub fn seek(&mut self, step: u64) -> Result<StepOutcome, ReplayError> {
        if step < self.position() {
            self.simulation = start(&self.header.source)?;
            self.applied = 0;
            self.apply_due()?;
        }
        let ahead = step - self.position();
        self.run(ahead)
    }

    /// Injects a fault now. Injections recorded for later steps belong to a
    /// future this one replaces, so they are dropped, and the run no longer
    /// replays an imported recording.
    pub fn inject(&mut self, fault: Fault) -> Result<(), ReplayError> {
        let index = self.applied;
        self.simulation
            .inject(fault)
            .map_err(|source| ReplayError::Injection { index, source })?;
        self.header.injections.truncate(self.applied);
        self.header.injections.push(Injection {
            step: self.position(),
            fault,
        });
        self.applied += 1;
        self.verification = None;
        Ok(())
    }

    /// The trace file of the run so far: the header with the injections
    /// made so far, then its events.
    pub fn export(&self) -> String {
        let bytes = self
            .simulation
            .trace_file()
            .expect("a player keeps its trace");
        String::from_utf8(bytes).expect("JSON is UTF-8")
    }
}
