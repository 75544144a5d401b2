//! Scenarios: a run's starting world (wallets, stock, the orders the client
//! will place) and the faults injected at its start, given by hand instead
//! of drawn from a seed. The browser harness's walkthroughs are scenarios;
//! so is any scenario a learner writes and imports.
//!
//! A seeded run draws its world from the seed ([`Scenario::drawn`]) and then
//! runs exactly as a scenario does: one code path for both.

use saldo_domain::messages::{OrderLine, Service};
use saldo_domain::order::{CancelReason, OrderStatus};
use saldo_types::{Currency, CustomerId, Money, Sku};
use serde::{Deserialize, Serialize};

use crate::config::SimConfig;
use crate::fault::{Fault, FaultError};
use crate::rng::Rng;

/// The currency every simulated wallet, price and order uses.
pub const CURRENCY: Currency = Currency::EUR;

/// The most orders a hand-written scenario may place (a scenario is for
/// reading step by step; seeded runs are for volume).
pub const SCENARIO_ORDERS_MAX: usize = 1_000;

/// A customer's wallet, topped up before the run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WalletSetup {
    /// The owner.
    pub customer: CustomerId,
    /// The opening top-up.
    pub amount: Money,
}

/// A SKU's stock before the run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StockSetup {
    /// The SKU.
    pub sku: Sku,
    /// Units on hand.
    pub on_hand: u64,
    /// The price of one unit.
    pub unit_price: Money,
}

/// An order the client will place, in this order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OrderSetup {
    /// Who orders (and pays).
    pub customer: CustomerId,
    /// What.
    pub lines: Vec<OrderLine>,
}

/// A starting world and the faults injected before the first step.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    /// A short stable name (`happy_path`).
    pub name: String,
    /// The seed for the choices the run still makes (which ready service
    /// acts next, how long a crash lasts).
    pub seed: u64,
    /// Wallets, topped up in this order.
    pub wallets: Vec<WalletSetup>,
    /// Stock, set in this order.
    pub stock: Vec<StockSetup>,
    /// The client's orders, placed in this order.
    pub orders: Vec<OrderSetup>,
    /// Faults injected before the first step.
    #[serde(default)]
    pub faults: Vec<Fault>,
}

/// Why a scenario cannot run.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScenarioError {
    /// No orders, or more than [`SCENARIO_ORDERS_MAX`].
    #[error("a scenario places from 1 to {SCENARIO_ORDERS_MAX} orders, not {0}")]
    OrderCount(usize),
    /// An order without lines or with a line of zero units.
    #[error("order {index}: every order needs lines, each of at least one unit")]
    OrderLines {
        /// The order's position in the scenario.
        index: usize,
    },
    /// An amount in another currency than [`CURRENCY`].
    #[error("{what}: the simulator runs in {CURRENCY}, not {found}")]
    Currency {
        /// Which setting.
        what: String,
        /// The currency given.
        found: Currency,
    },
    /// A wallet or stock setting the service itself refuses.
    #[error("{what}: {reason}")]
    Refused {
        /// Which setting.
        what: String,
        /// The service's answer.
        reason: String,
    },
    /// A fault with a bad value.
    #[error("fault {index}: {source}")]
    Fault {
        /// The fault's position in the scenario.
        index: usize,
        /// What is wrong with it.
        source: FaultError,
    },
}

impl Scenario {
    /// The world a seeded run starts from, drawn from `rng` (which the run
    /// then goes on using).
    pub fn drawn(config: &SimConfig, rng: &mut Rng) -> Scenario {
        let orders = u64::from(config.orders);
        let customers = (orders / 3 + 2).min(10_000);
        let skus = (orders / 20 + 2).min(1_000);
        let mut wallets = Vec::with_capacity(customers as usize);
        for customer in 0..customers {
            // About one customer in seven never tops up: their orders fail with unknown_wallet.
            if rng.below(7) == 0 {
                continue;
            }
            wallets.push(WalletSetup {
                customer: CustomerId::new(format!("c{customer}")).expect("valid id"),
                amount: Money::from_minor(rng.between(500, 9_000) as i64, CURRENCY),
            });
        }
        // Stock is drawn around the expected demand, so some SKUs run out:
        // orders contend for the last units.
        let demand = (orders * 9 / 4 / skus).max(1);
        let stock = (0..skus)
            .map(|sku| StockSetup {
                sku: Sku::new(format!("s{sku}")).expect("valid sku"),
                on_hand: rng.between(demand * 3 / 10, demand * 12 / 10),
                unit_price: Money::from_minor(rng.between(100, 2_000) as i64, CURRENCY),
            })
            .collect();
        let orders = (0..orders)
            .map(|_| {
                let customer =
                    CustomerId::new(format!("c{}", rng.below(customers))).expect("valid id");
                let first = rng.below(skus);
                let mut lines = vec![OrderLine {
                    sku: Sku::new(format!("s{first}")).expect("valid"),
                    quantity: rng.between(1, 2) as u32,
                }];
                if skus > 1 && rng.chance(500_000) {
                    let second = (first + 1 + rng.below(skus - 1)) % skus;
                    lines.push(OrderLine {
                        sku: Sku::new(format!("s{second}")).expect("valid"),
                        quantity: rng.between(1, 2) as u32,
                    });
                }
                OrderSetup { customer, lines }
            })
            .collect();
        Scenario {
            name: format!("seed-{}", config.seed),
            seed: config.seed,
            wallets,
            stock,
            orders,
            faults: Vec::new(),
        }
    }

    /// Checks what the services would not check for themselves before the
    /// run starts.
    pub fn validate(&self) -> Result<(), ScenarioError> {
        if self.orders.is_empty() || self.orders.len() > SCENARIO_ORDERS_MAX {
            return Err(ScenarioError::OrderCount(self.orders.len()));
        }
        if let Some(index) = self.orders.iter().position(|order| {
            order.lines.is_empty() || order.lines.iter().any(|line| line.quantity == 0)
        }) {
            return Err(ScenarioError::OrderLines { index });
        }
        let amounts = self
            .wallets
            .iter()
            .map(|wallet| (format!("wallet {}", wallet.customer), wallet.amount))
            .chain(
                self.stock
                    .iter()
                    .map(|stock| (format!("stock {}", stock.sku), stock.unit_price)),
            );
        for (what, amount) in amounts {
            if amount.currency() != CURRENCY {
                return Err(ScenarioError::Currency {
                    what,
                    found: amount.currency(),
                });
            }
        }
        for (index, fault) in self.faults.iter().enumerate() {
            fault
                .validate()
                .map_err(|source| ScenarioError::Fault { index, source })?;
        }
        Ok(())
    }
}

/// How an order ended, in the words the walkthroughs check.
pub fn ending(status: &OrderStatus) -> String {
    match status {
        OrderStatus::Pending => "pending".to_owned(),
        OrderStatus::Confirmed => "confirmed".to_owned(),
        OrderStatus::Cancelled(reason) => format!("cancelled:{}", reason_name(*reason)),
    }
}

fn reason_name(reason: CancelReason) -> String {
    serde_json::to_value(reason)
        .ok()
        .and_then(|value| value.as_str().map(str::to_owned))
        .unwrap_or_default()
}

/// A teaching scenario: the world, the faults, and how it must end.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Walkthrough {
    /// The scenario.
    pub scenario: Scenario,
    /// A title for people.
    pub title: &'static str,
    /// What it shows, in a sentence or two.
    pub summary: &'static str,
    /// How the orders end, sorted (so a race's winner need not be named):
    /// each `confirmed` or `cancelled:<reason>`, as [`ending`] writes them.
    pub endings_sorted: Vec<&'static str>,
}

fn customer(name: &str) -> CustomerId {
    CustomerId::new(name).expect("valid id")
}

fn sku(name: &str) -> Sku {
    Sku::new(name).expect("valid sku")
}

fn eur(minor: i64) -> Money {
    Money::from_minor(minor, CURRENCY)
}

fn order(customer_name: &str, sku_name: &str, quantity: u32) -> OrderSetup {
    OrderSetup {
        customer: customer(customer_name),
        lines: vec![OrderLine {
            sku: sku(sku_name),
            quantity,
        }],
    }
}

/// The demo world: alice has 100.00 EUR, bob 5.00 EUR; books cost 15.00
/// EUR (10 on hand), lamps 45.00 EUR (1 left); carol has 100.00 EUR.
fn world(name: &str, orders: Vec<OrderSetup>, faults: Vec<Fault>) -> Scenario {
    Scenario {
        name: name.to_owned(),
        seed: 1,
        wallets: vec![
            WalletSetup {
                customer: customer("alice"),
                amount: eur(10_000),
            },
            WalletSetup {
                customer: customer("bob"),
                amount: eur(500),
            },
            WalletSetup {
                customer: customer("carol"),
                amount: eur(10_000),
            },
        ],
        stock: vec![
            StockSetup {
                sku: sku("book"),
                on_hand: 10,
                unit_price: eur(1_500),
            },
            StockSetup {
                sku: sku("lamp"),
                on_hand: 1,
                unit_price: eur(4_500),
            },
        ],
        orders,
        faults,
    }
}

/// The built-in walkthroughs, in teaching order.
pub fn walkthroughs() -> Vec<Walkthrough> {
    vec![
        Walkthrough {
            scenario: world("happy_path", vec![order("alice", "book", 2)], vec![]),
            title: "The happy path",
            summary: "Alice buys two books. The order service reserves stock, takes payment and commits the stock, one message at a time, each step committed with its outbox row.",
            endings_sorted: vec!["confirmed"],
        },
        Walkthrough {
            scenario: world("insufficient_funds", vec![order("bob", "book", 1)], vec![]),
            title: "Insufficient funds, then compensation",
            summary: "Bob has 5.00 EUR and orders a 15.00 EUR book. Stock is reserved, the charge is declined, and the saga compensates by releasing the stock.",
            endings_sorted: vec!["cancelled:insufficient_funds"],
        },
        Walkthrough {
            scenario: world("out_of_stock", vec![order("alice", "lamp", 2)], vec![]),
            title: "Out of stock",
            summary: "Alice wants two lamps; one is left. Inventory refuses the whole order, so nothing is reserved and nobody is charged.",
            endings_sorted: vec!["cancelled:out_of_stock"],
        },
        Walkthrough {
            scenario: world(
                "duplicate_delivery",
                vec![order("alice", "book", 1)],
                vec![Fault::Duplicate {
                    service: Service::Order,
                }],
            ),
            title: "A duplicate delivery, absorbed",
            summary: "The broker delivers the ReserveStock command twice. Inventory's inbox knows the message id, so the second copy changes nothing.",
            endings_sorted: vec!["confirmed"],
        },
        Walkthrough {
            scenario: world(
                "payment_crash",
                vec![order("alice", "book", 1)],
                vec![Fault::CrashBeforeAck {
                    service: Service::Payment,
                }],
            ),
            title: "The payment service crashes and restarts",
            summary: "Payment charges the wallet, commits, and crashes before acknowledging the message. After the restart the broker delivers the charge again; the inbox absorbs it and the wallet is charged once.",
            endings_sorted: vec!["confirmed"],
        },
        Walkthrough {
            scenario: world(
                "publisher_crash",
                vec![order("alice", "book", 1)],
                vec![Fault::CrashAfterPublish {
                    service: Service::Order,
                }],
            ),
            title: "The publisher crashes between publishing and marking",
            summary: "The order service's outbox publisher sends ReserveStock and crashes before marking the row published. It publishes the row again on restart; inventory absorbs the copy.",
            endings_sorted: vec!["confirmed"],
        },
        Walkthrough {
            scenario: world(
                "deadline_fires",
                vec![order("alice", "book", 1)],
                vec![Fault::Stall {
                    consumer: Service::Payment,
                    ms: 60_000,
                }],
            ),
            title: "A deadline fires, then compensation",
            summary: "Payment's partitions stall for a minute. The take-payment step times out three times, the saga turns back, releases the stock and refunds whatever the late charge takes.",
            endings_sorted: vec!["cancelled:payment_timed_out"],
        },
        Walkthrough {
            scenario: world(
                "last_unit_race",
                vec![order("alice", "lamp", 1), order("carol", "lamp", 1)],
                vec![],
            ),
            title: "Two customers race for the last unit",
            summary: "Alice and Carol each order the last lamp at the same moment. Inventory decides one reservation at a time against a versioned stock row: one wins, the other is refused, stock never goes negative.",
            endings_sorted: vec!["cancelled:out_of_stock", "confirmed"],
        },
    ]
}

/// The built-in walkthrough called `name`.
pub fn walkthrough(name: &str) -> Option<Walkthrough> {
    walkthroughs()
        .into_iter()
        .find(|walkthrough| walkthrough.scenario.name == name)
}
