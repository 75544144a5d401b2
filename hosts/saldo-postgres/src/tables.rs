//! Saldo's versioned tables described as data, and the batched statements
//! built from the descriptions: one round trip per table to load a batch,
//! one multi-row statement per table and kind of write to commit it.
//!
//! Rows travel as one JSON array per statement (`jsonb_to_recordset`), so
//! a statement has one bind parameter whatever the batch's size.

use std::collections::BTreeMap;
use std::sync::Arc;

use saldo_domain::decision::{Row, RowKey, Versioned, Write};
use saldo_domain::inventory::{ReservationState, StockRow};
use saldo_domain::order::{OrderRow, OrderStatus};
use saldo_domain::payment::PaymentState;
use saldo_ledger::{Account, AccountId};
use saldo_types::Money;
use serde_json::{Value, json};
use sqlx::postgres::PgRow;
use sqlx::{PgConnection, Row as _};

use crate::store::{StoreError, corrupt, currency, from_json, to_i64, to_u64};

/// The versioned tables.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Table {
    Orders,
    Stock,
    Reservations,
    Payments,
    Wallets,
    Accounts,
}

/// How a column is filled from a record of the JSON array.
#[derive(Debug, Clone, Copy)]
enum Fill {
    /// Copied as it is.
    Plain,
    /// Milliseconds since the epoch, stored as `timestamptz`.
    Timestamp,
}

/// A column besides the key and the version: its name, its type in the
/// JSON record, how it is filled, and whether an update rewrites it.
#[derive(Debug, Clone, Copy)]
struct Column {
    name: &'static str,
    record_type: &'static str,
    fill: Fill,
    updated: bool,
}

const fn column(name: &'static str, record_type: &'static str) -> Column {
    Column {
        name,
        record_type,
        fill: Fill::Plain,
        updated: true,
    }
}

const fn timestamp(name: &'static str) -> Column {
    Column {
        name,
        record_type: "bigint",
        fill: Fill::Timestamp,
        updated: true,
    }
}

const fn insert_only(column: Column) -> Column {
    Column {
        updated: false,
        ..column
    }
}

impl Table {
    const ALL: [Table; 6] = [
        Table::Orders,
        Table::Stock,
        Table::Reservations,
        Table::Payments,
        Table::Wallets,
        Table::Accounts,
    ];

    fn of(key: &RowKey) -> Table {
        match key {
            RowKey::Order(_) => Table::Orders,
            RowKey::Stock(_) => Table::Stock,
            RowKey::Reservation(_) => Table::Reservations,
            RowKey::Payment(_) => Table::Payments,
            RowKey::Wallet(_) => Table::Wallets,
            RowKey::Account(_) => Table::Accounts,
        }
    }

    pub(crate) fn name(self) -> &'static str {
        match self {
            Table::Orders => "orders.orders",
            Table::Stock => "inventory.stock",
            Table::Reservations => "inventory.reservations",
            Table::Payments => "payment.payments",
            Table::Wallets => "payment.wallets",
            Table::Accounts => "payment.accounts",
        }
    }

    pub(crate) fn key_column(self) -> &'static str {
        match self {
            Table::Orders | Table::Reservations | Table::Payments => "order_id",
            Table::Stock => "sku",
            Table::Wallets => "customer_id",
            Table::Accounts => "account_id",
        }
    }

    fn columns(self) -> &'static [Column] {
        const ORDERS: &[Column] = &[
            column("amount_minor", "bigint"),
            column("status", "text"),
            column("cancel_reason", "text"),
            column("awaiting", "text"),
            timestamp("deadline_at"),
            column("body", "jsonb"),
            timestamp("updated_at"),
            insert_only(column("customer_id", "text")),
            insert_only(column("currency", "text")),
            insert_only(timestamp("created_at")),
        ];
        const STOCK: &[Column] = &[
            column("on_hand", "bigint"),
            column("reserved", "bigint"),
            column("unit_price_minor", "bigint"),
            column("currency", "text"),
        ];
        const RESERVATIONS: &[Column] = &[
            column("state", "text"),
            column("body", "jsonb"),
            timestamp("updated_at"),
        ];
        const PAYMENTS: &[Column] = &[
            column("customer_id", "text"),
            column("amount_minor", "bigint"),
            column("currency", "text"),
            column("state", "text"),
            column("body", "jsonb"),
            timestamp("updated_at"),
        ];
        const WALLETS: &[Column] = &[column("currency", "text"), column("body", "jsonb")];
        const ACCOUNTS: &[Column] = &[
            column("balance_minor", "bigint"),
            column("held_minor", "bigint"),
            insert_only(column("kind", "text")),
            insert_only(column("currency", "text")),
        ];
        match self {
            Table::Orders => ORDERS,
            Table::Stock => STOCK,
            Table::Reservations => RESERVATIONS,
            Table::Payments => PAYMENTS,
            Table::Wallets => WALLETS,
            Table::Accounts => ACCOUNTS,
        }
    }

    /// The columns a load reads, after the key and the version.
    fn loaded_columns(self) -> &'static str {
        match self {
            Table::Stock => "on_hand, reserved, unit_price_minor, currency",
            Table::Accounts => "balance_minor, held_minor",
            Table::Orders | Table::Reservations | Table::Payments | Table::Wallets => "body::text",
        }
    }

    /// `u(key text, expected bigint, column type, ...)`.
    fn record_shape(self) -> String {
        let mut shape = format!("u({} text, expected bigint", self.key_column());
        for column in self.columns() {
            shape.push_str(&format!(", {} {}", column.name, column.record_type));
        }
        shape.push(')');
        shape
    }

    /// The statement inserting every record whose key is absent; it returns
    /// the keys it inserted.
    pub(crate) fn insert_sql(self) -> String {
        let names: Vec<&str> = self.columns().iter().map(|column| column.name).collect();
        let values: Vec<String> = self.columns().iter().map(fill).collect();
        format!(
            "INSERT INTO {table} ({key}, version, {names}) SELECT u.{key}, 1, {values} \
             FROM jsonb_to_recordset($1::jsonb) AS {shape} ON CONFLICT ({key}) DO NOTHING RETURNING {key}",
            table = self.name(),
            key = self.key_column(),
            names = names.join(", "),
            values = values.join(", "),
            shape = self.record_shape(),
        )
    }

    /// The statement updating every record whose stored version is the
    /// expected one; it returns the keys it updated.
    pub(crate) fn update_sql(self) -> String {
        let assignments: Vec<String> = self
            .columns()
            .iter()
            .filter(|column| column.updated)
            .map(|column| format!("{} = {}", column.name, fill(column)))
            .collect();
        format!(
            "UPDATE {table} AS t SET version = t.version + 1, {assignments} \
             FROM jsonb_to_recordset($1::jsonb) AS {shape} \
             WHERE t.{key} = u.{key} AND t.version = u.expected RETURNING t.{key}",
            table = self.name(),
            key = self.key_column(),
            assignments = assignments.join(", "),
            shape = self.record_shape(),
        )
    }

    fn load_sql(self) -> String {
        format!(
            "SELECT {key}, version, {columns} FROM {table} WHERE {key} = ANY($1)",
            key = self.key_column(),
            columns = self.loaded_columns(),
            table = self.name(),
        )
    }

    /// Locks the rows under the keys `$1` in key order.
    pub(crate) fn lock_sql(self) -> String {
        format!(
            "SELECT 1 FROM {table} WHERE {key} = ANY($1) ORDER BY {key} FOR UPDATE",
            key = self.key_column(),
            table = self.name(),
        )
    }

    /// The version stored under the keys `$1` (absent keys are absent).
    pub(crate) fn versions_sql(self) -> String {
        format!(
            "SELECT version FROM {table} WHERE {key} = ANY($1)",
            key = self.key_column(),
            table = self.name(),
        )
    }
}

fn fill(column: &Column) -> String {
    match column.fill {
        Fill::Plain => format!("u.{}", column.name),
        Fill::Timestamp => format!(
            "timestamptz 'epoch' + u.{} * interval '1 millisecond'",
            column.name
        ),
    }
}

/// A row key's text in its table.
pub(crate) fn key_text(key: &RowKey) -> String {
    match key {
        RowKey::Order(id) | RowKey::Reservation(id) | RowKey::Payment(id) => id.as_str().to_owned(),
        RowKey::Stock(sku) => sku.as_str().to_owned(),
        RowKey::Wallet(customer) => customer.as_str().to_owned(),
        RowKey::Account(id) => id.to_string(),
    }
}

/// The key of `table` named by `text`.
pub(crate) fn key_from(table: Table, text: &str) -> Result<RowKey, StoreError> {
    Ok(match table {
        Table::Orders => RowKey::Order(text.parse().map_err(corrupt)?),
        Table::Stock => RowKey::Stock(text.parse().map_err(corrupt)?),
        Table::Reservations => RowKey::Reservation(text.parse().map_err(corrupt)?),
        Table::Payments => RowKey::Payment(text.parse().map_err(corrupt)?),
        Table::Wallets => RowKey::Wallet(text.parse().map_err(corrupt)?),
        Table::Accounts => RowKey::Account(text.parse().map_err(corrupt)?),
    })
}

/// Groups keys (or writes) by their table.
pub(crate) fn by_table<'a, T>(
    items: impl IntoIterator<Item = &'a T>,
    key: impl Fn(&T) -> RowKey,
) -> BTreeMap<Table, Vec<&'a T>>
where
    T: 'a,
{
    let mut groups: BTreeMap<Table, Vec<&T>> = BTreeMap::new();
    for item in items {
        groups.entry(Table::of(&key(item))).or_default().push(item);
    }
    groups
}

/// Loads the rows under `keys`, one query per table.
pub(crate) async fn load_rows(
    connection: &mut PgConnection,
    keys: impl IntoIterator<Item = &RowKey>,
) -> Result<BTreeMap<RowKey, Versioned<Row>>, StoreError> {
    let mut rows = BTreeMap::new();
    for (table, keys) in by_table(keys, RowKey::clone) {
        let texts: Vec<String> = keys.iter().map(|key| key_text(key)).collect();
        let found = sqlx::query(sqlx::AssertSqlSafe(table.load_sql()))
            .bind(&texts)
            .fetch_all(&mut *connection)
            .await?;
        for row in found {
            let key = key_from(table, row.try_get::<&str, _>(0)?)?;
            let versioned = Versioned {
                version: to_u64(row.try_get(1)?, "version")?,
                value: decode_row(&key, &row)?,
            };
            rows.insert(key, versioned);
        }
    }
    Ok(rows)
}

/// Every key of every versioned table (the contract tests' dump).
pub(crate) async fn all_keys(connection: &mut PgConnection) -> Result<Vec<RowKey>, StoreError> {
    let mut keys = Vec::new();
    for table in Table::ALL {
        let sql = format!("SELECT {} FROM {}", table.key_column(), table.name());
        for text in sqlx::query_scalar::<_, String>(sqlx::AssertSqlSafe(sql))
            .fetch_all(&mut *connection)
            .await?
        {
            keys.push(key_from(table, &text)?);
        }
    }
    keys.sort();
    Ok(keys)
}

/// A loaded row's content: the typed columns of stock and accounts, the
/// JSON body of the rest.
fn decode_row(key: &RowKey, row: &PgRow) -> Result<Row, StoreError> {
    let value = match key {
        RowKey::Stock(sku) => Row::Stock(StockRow {
            sku: sku.clone(),
            on_hand: to_u64(row.try_get(2)?, "on_hand")?,
            reserved: to_u64(row.try_get(3)?, "reserved")?,
            unit_price: Money::from_minor(row.try_get(4)?, currency(row.try_get::<&str, _>(5)?)?),
        }),
        RowKey::Account(id) => {
            let currency = id.currency();
            Row::Account(Account {
                id: id.clone(),
                balance: Money::from_minor(row.try_get(2)?, currency),
                held: Money::from_minor(row.try_get(3)?, currency),
            })
        }
        RowKey::Order(_) => Row::Order(Arc::new(from_json::<OrderRow>(row.try_get(2)?, "order")?)),
        RowKey::Reservation(_) => Row::Reservation(from_json(row.try_get(2)?, "reservation")?),
        RowKey::Payment(_) => Row::Payment(from_json(row.try_get(2)?, "payment")?),
        RowKey::Wallet(_) => Row::Wallet(from_json(row.try_get(2)?, "wallet")?),
    };
    if value.key() != *key {
        return Err(corrupt(format!(
            "row under {key:?} holds {:?}",
            value.key()
        )));
    }
    Ok(value)
}

/// One write as a record of its table's JSON array.
pub(crate) fn record(write: &Write) -> Result<Value, StoreError> {
    let key = key_text(&write.row.key());
    let expected = to_i64(write.expected, "version")?;
    let fields = match &write.row {
        Row::Order(order) => {
            let (status, reason) = match order.status() {
                OrderStatus::Pending => ("PENDING", None),
                OrderStatus::Confirmed => ("CONFIRMED", None),
                OrderStatus::Cancelled(reason) => (
                    "CANCELLED",
                    Some(
                        serde_json::to_string(&reason)
                            .expect("a reason serialises")
                            .trim_matches('"')
                            .to_owned(),
                    ),
                ),
            };
            json!({
                "amount_minor": order.amount.map(|amount| amount.amount_minor()),
                "status": status,
                "cancel_reason": reason,
                "awaiting": order.saga.awaiting().name(),
                "deadline_at": order.deadline().map(|deadline| deadline.unix_ms()),
                "body": order.as_ref(),
                "updated_at": order.updated_at.unix_ms(),
                "customer_id": order.customer.as_str(),
                "currency": order.currency.code(),
                "created_at": order.created_at.unix_ms(),
            })
        }
        Row::Stock(stock) => json!({
            "on_hand": stock.on_hand,
            "reserved": stock.reserved,
            "unit_price_minor": stock.unit_price.amount_minor(),
            "currency": stock.unit_price.currency().code(),
        }),
        Row::Reservation(reservation) => json!({
            "state": reservation_state(reservation.state),
            "body": reservation,
            "updated_at": reservation.updated_at.unix_ms(),
        }),
        Row::Payment(payment) => json!({
            "customer_id": payment.customer.as_str(),
            "amount_minor": payment.amount.amount_minor(),
            "currency": payment.amount.currency().code(),
            "state": payment_state(payment.state),
            "body": payment,
            "updated_at": payment.updated_at.unix_ms(),
        }),
        Row::Wallet(wallet) => json!({
            "currency": wallet.currency.code(),
            "body": wallet,
        }),
        Row::Account(account) => json!({
            "balance_minor": account.balance.amount_minor(),
            "held_minor": account.held.amount_minor(),
            "kind": account_kind(&account.id),
            "currency": account.id.currency().code(),
        }),
    };
    let mut record = fields;
    let object = record
        .as_object_mut()
        .expect("every record is a JSON object");
    object.insert(
        Table::of(&write.row.key()).key_column().to_owned(),
        json!(key),
    );
    object.insert("expected".to_owned(), json!(expected));
    Ok(record)
}

pub(crate) fn account_kind(id: &AccountId) -> &'static str {
    match id {
        AccountId::Wallet { .. } => "wallet",
        AccountId::MerchantRevenue { .. } => "merchant_revenue",
        AccountId::Funding { .. } => "funding",
    }
}

fn reservation_state(state: ReservationState) -> &'static str {
    match state {
        ReservationState::Held => "held",
        ReservationState::Committed => "committed",
        ReservationState::Released => "released",
        ReservationState::Rejected { .. } => "rejected",
        ReservationState::Cancelled => "cancelled",
    }
}

fn payment_state(state: PaymentState) -> &'static str {
    match state {
        PaymentState::Captured { .. } => "captured",
        PaymentState::Failed { .. } => "failed",
        PaymentState::Refunded { .. } => "refunded",
        PaymentState::CancelledBeforeCharge => "cancelled_before_charge",
    }
}
