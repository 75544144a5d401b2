//! An order carried through the saga on the in-memory store, following the
//! rhythm every host follows: load, decide, commit atomically, then deliver
//! what the outboxes hold. Run: `cargo run -p saldo-examples --example order_flow`.

use saldo_domain::decision::{Row, RowKey};
use saldo_domain::inventory::{SetStock, decide_set_stock, set_stock_read_set};
use saldo_domain::messages::{OrderLine, Service, Traceparent};
use saldo_domain::order::{PlaceOrder, decide_place_order, place_order_read_set};
use saldo_domain::payment::{TopUp, decide_top_up, top_up_read_set};
use saldo_domain::store::execute;
use saldo_domain::{MemoryStore, Rules, decide_message, message_read_set};
use saldo_idempotency::IdempotencyKey;
use saldo_types::{CorrelationId, Currency, CustomerId, Id128, Money, OrderId, Sku, Timestamp};

fn main() {
    let rules = Rules::default();
    let mut store = MemoryStore::new();
    let now = Timestamp::from_unix_ms(1_764_000_000_000);
    let eur = Currency::EUR;
    let trace = Traceparent::root(Id128::derive("example", &[b"trace"]));
    let correlation = CorrelationId::new("example-1").expect("valid id");

    let top_up = TopUp {
        customer: CustomerId::new("alice").expect("valid id"),
        amount: Money::parse("30", eur).expect("amount"),
        idempotency_key: IdempotencyKey::new("top-up-1").expect("valid key"),
        principal: None,
        correlation_id: correlation.clone(),
        traceparent: trace.clone(),
    };
    execute(&mut store, &top_up_read_set(&top_up), now, |snapshot| {
        decide_top_up(&rules.payment, snapshot, &top_up, now)
    })
    .expect("top-up");

    let stock = SetStock {
        sku: Sku::new("book").expect("valid sku"),
        on_hand: 3,
        unit_price: Money::parse("12.50", eur).expect("price"),
    };
    execute(&mut store, &set_stock_read_set(&stock), now, |snapshot| {
        decide_set_stock(snapshot, &stock)
    })
    .expect("stock");

    let order_id = OrderId::new("order-1").expect("valid id");
    let place = PlaceOrder {
        order_id: order_id.clone(),
        customer: CustomerId::new("alice").expect("valid id"),
        lines: vec![OrderLine {
            sku: Sku::new("book").expect("valid sku"),
            quantity: 2,
        }],
        currency: eur,
        idempotency_key: IdempotencyKey::new("order-request-1").expect("valid key"),
        principal: None,
        correlation_id: correlation,
        traceparent: trace,
    };
    execute(&mut store, &place_order_read_set(&place), now, |snapshot| {
        decide_place_order(&rules.order_saga, snapshot, &place, now)
    })
    .expect("order accepted");

    // The outbox relay and the consumers, in one loop.
    loop {
        let mut delivered = 0;
        for service in Service::ALL {
            for row in store.outbox_pending(service, 100) {
                store.mark_published(service, &[row.sequence]);
                let Some(consumer) = row.envelope.payload.consumer() else {
                    continue;
                };
                println!(
                    "{:>9} -> {:<9} {}",
                    service.name(),
                    consumer.name(),
                    row.envelope.message_type()
                );
                let read_set = message_read_set(consumer, &row.envelope);
                execute(&mut store, &read_set, now, |snapshot| {
                    decide_message(&rules, consumer, snapshot, &row.envelope, now)
                })
                .expect("handled");
                delivered += 1;
            }
        }
        if delivered == 0 {
            break;
        }
    }

    let Some(Row::Order(order)) = store.row(&RowKey::Order(order_id)).map(|row| &row.value) else {
        panic!("the order exists");
    };
    println!(
        "order-1: {:?}, charged {}",
        order.status(),
        order.amount.expect("priced")
    );
    for record in order.history() {
        println!("  {} {:?}", record.at, record.event);
    }
    assert_eq!(order.status(), saldo_domain::order::OrderStatus::Confirmed);
}
