//! The shop's write side: command handlers per aggregate, the payment step,
//! and the fulfilment process manager. Built only on Strata's public API.

use std::sync::Arc;

use strata::{
    Aggregate, CommandContext, CommandError, CommandHandler, CommandOutcome, CommandSender,
    EventStore, ProcessManager, ProjectionError, Recorded, SendError, StreamId,
};
use uuid::Uuid;

use crate::domain::catalog::{Product, ProductCommand, ProductError};
use crate::domain::fulfilment::{react, FulfilmentCommand, ShopEvent};
use crate::domain::inventory::{Inventory, InventoryCommand, InventoryError};
use crate::domain::order::{Order, OrderCommand, OrderError, OrderLine, OrderStatus};
use crate::domain::payment::PaymentGateway;
use crate::domain::{inventory_stream, order_stream, product_stream, InvalidSku};
use crate::metrics::Metrics;

/// Why a shop command failed; each maps to one HTTP status.
#[derive(Debug, thiserror::Error)]
pub enum ShopError {
    /// Malformed input (400).
    #[error("{0}")]
    BadRequest(String),
    /// The product, order or sku does not exist (404).
    #[error("{0}")]
    NotFound(String),
    /// A domain rule refused the command (422).
    #[error("{0}")]
    Rule(String),
    /// The payment was declined (402); the failure is recorded on the order.
    #[error("payment declined: {reason}")]
    PaymentDeclined {
        /// Why.
        reason: String,
        /// Where the failure was recorded.
        outcome: CommandOutcome,
    },
    /// Another writer kept winning (409); retry.
    #[error("{0}")]
    Conflict(String),
    /// Another payment attempt of the order is in progress (409); retry
    /// later, or with the attempt's own Idempotency-Key.
    #[error("{0}")]
    PaymentInProgress(String),
    /// The Idempotency-Key was already used for a different request (422).
    #[error("{0}")]
    KeyReused(String),
    /// The principal may not do this (403; 401 when anonymous).
    #[error("{0}")]
    Forbidden(String),
    /// Store or bus trouble (503). Logged; the client sees a generic message.
    #[error("service unavailable")]
    Unavailable(String),
}

impl From<InvalidSku> for ShopError {
    fn from(e: InvalidSku) -> Self {
        ShopError::BadRequest(e.to_string())
    }
}

fn command_error<E: std::error::Error + 'static>(
    e: CommandError<E>,
    rule: impl FnOnce(E) -> ShopError,
) -> ShopError {
    match e {
        CommandError::Domain(d) => rule(d),
        CommandError::Conflict { .. } => ShopError::Conflict(e.to_string()),
        CommandError::CommandIdReused { .. } => ShopError::Conflict(
            "the Idempotency-Key was already used for a request on another aggregate".into(),
        ),
        CommandError::CommandMismatch { .. } => ShopError::KeyReused(
            "the Idempotency-Key was already used for a different request".into(),
        ),
        CommandError::Input(i) => ShopError::BadRequest(i.to_string()),
        CommandError::Forbidden(f) => ShopError::Forbidden(f.reason),
        other => ShopError::Unavailable(other.to_string()),
    }
}

fn product_rule(e: ProductError) -> ShopError {
    match e {
        ProductError::NotRegistered => ShopError::NotFound(e.to_string()),
        ProductError::InvalidSku(_)
        | ProductError::InvalidName
        | ProductError::InvalidPrice { .. } => ShopError::BadRequest(e.to_string()),
        other => ShopError::Rule(other.to_string()),
    }
}

fn inventory_rule(e: InventoryError) -> ShopError {
    match e {
        InventoryError::ZeroQuantity | InventoryError::InvalidSku(_) => {
            ShopError::BadRequest(e.to_string())
        }
        other => ShopError::Rule(other.to_string()),
    }
}

fn order_rule(e: OrderError) -> ShopError {
    match e {
        OrderError::InvalidTransition { .. }
        | OrderError::AlreadyPlaced { .. }
        | OrderError::AmountMismatch { .. } => ShopError::Rule(e.to_string()),
        OrderError::PaymentInProgress { .. } => ShopError::PaymentInProgress(format!(
            "{e}; retry once it has ended, or with the Idempotency-Key that started it"
        )),
        OrderError::UnknownSku { .. } => ShopError::NotFound(e.to_string()),
        other => ShopError::BadRequest(other.to_string()),
    }
}

/// How long a payment attempt may go without a result before a pay with
/// another Idempotency-Key completes it (with the attempt's own gateway
/// key, so still without a second charge).
pub const PAYMENT_TAKEOVER_AFTER: std::time::Duration = std::time::Duration::from_secs(30);

/// The gateway's idempotency key for a payment attempt.
pub fn payment_key(attempt_id: Uuid) -> Uuid {
    Uuid::new_v5(&attempt_id, b"payment-gateway-charge")
}

/// Checks `command` against `state` for `ctx`'s principal ahead of the
/// handler, where a step would otherwise tell the caller something about
/// state that is not theirs (the handler checks again, on the state it
/// decides on).
fn authorized<A: Aggregate>(
    state: &A,
    command: &A::Command,
    ctx: &CommandContext,
) -> Result<(), ShopError> {
    match &ctx.principal {
        Some(who) => state
            .authorize(command, who)
            .map_err(|f| ShopError::Forbidden(f.reason)),
        None => Ok(()),
    }
}

/// The service that records payment results.
pub const PAYMENT_SERVICE: &str = "payment";

/// The context that records a payment attempt's result: its command id is
/// derived from the attempt, so the result is recorded once whoever
/// completes the attempt; the payment service records it, caused by the
/// attempt the customer started.
fn payment_result_context(attempt_id: Uuid, ctx: &CommandContext) -> CommandContext {
    let mut result = CommandContext::with_command_id(Uuid::new_v5(&attempt_id, b"payment-result"))
        .causation_id(attempt_id)
        .actor(PAYMENT_SERVICE);
    result.correlation_id = ctx.correlation_id;
    result.traceparent = ctx.traceparent.clone();
    result
}

/// A line as a client asks for it (the price comes from the catalog).
#[derive(Debug, Clone)]
pub struct LineRequest {
    /// The sku.
    pub sku: String,
    /// Units.
    pub quantity: u32,
}

/// The shop's command side over an event store.
pub struct Shop<S: EventStore> {
    /// The event store.
    pub store: S,
    /// Products.
    pub products: CommandHandler<Product, S>,
    /// Stock per sku.
    pub inventory: CommandHandler<Inventory, S>,
    /// Orders.
    pub orders: CommandHandler<Order, S>,
    /// The (simulated) payment gateway.
    pub gateway: Arc<PaymentGateway>,
    /// Counters for `/metrics`.
    pub metrics: Arc<Metrics>,
    /// Skus known to be registered. A product is never unregistered, so
    /// once seen, a sku needs no read of its stream again to be restocked.
    known_skus: moka::sync::Cache<String, ()>,
}

impl<S: EventStore> Clone for Shop<S> {
    fn clone(&self) -> Self {
        Shop {
            store: self.store.clone(),
            products: self.products.clone(),
            inventory: self.inventory.clone(),
            orders: self.orders.clone(),
            gateway: Arc::clone(&self.gateway),
            metrics: Arc::clone(&self.metrics),
            known_skus: self.known_skus.clone(),
        }
    }
}

impl<S: EventStore> Shop<S> {
    /// The shop over `store`, charging through `gateway`.
    pub fn new(store: S, gateway: PaymentGateway, metrics: Arc<Metrics>) -> Self {
        Shop {
            products: CommandHandler::new(store.clone()),
            inventory: CommandHandler::new(store.clone()),
            orders: CommandHandler::new(store.clone()),
            store,
            gateway: Arc::new(gateway),
            metrics,
            known_skus: moka::sync::Cache::new(100_000),
        }
    }

    /// Fails with [`ShopError::NotFound`] unless `sku` is registered: read
    /// from its stream once, then remembered.
    async fn product_exists(&self, sku: &str) -> Result<(), ShopError> {
        if self.known_skus.contains_key(sku) {
            return Ok(());
        }
        self.registered_product(sku).await?;
        self.known_skus.insert(sku.to_owned(), ());
        Ok(())
    }

    /// Runs one command, counting its outcome and duration in the metrics.
    async fn timed<T>(
        &self,
        kind: &str,
        command: impl std::future::Future<Output = Result<T, ShopError>>,
    ) -> Result<T, ShopError> {
        let started = std::time::Instant::now();
        let r = command.await;
        let outcome = match &r {
            Ok(_) => "ok",
            Err(ShopError::BadRequest(_)) | Err(ShopError::NotFound(_)) => "invalid",
            Err(ShopError::Rule(_))
            | Err(ShopError::PaymentDeclined { .. })
            | Err(ShopError::KeyReused(_)) => "rejected",
            Err(ShopError::Conflict(_)) | Err(ShopError::PaymentInProgress(_)) => "conflict",
            Err(ShopError::Forbidden(_)) => "forbidden",
            Err(ShopError::Unavailable(_)) => "error",
        };
        self.metrics.command(kind, outcome, started.elapsed());
        r
    }

    /// The first outcome of a repeated request, looked up before anything
    /// that reads current state validates it, so a repeat answers what the
    /// first request did whatever changed since. Only requests carrying a
    /// fingerprint (the HTTP layer sets one with an Idempotency-Key) can be
    /// repeats; a fresh command id needs no look-up.
    async fn repeat<A: Aggregate>(
        handler: &CommandHandler<A, S>,
        stream: &StreamId,
        ctx: &CommandContext,
        rule: impl FnOnce(A::Error) -> ShopError,
    ) -> Result<Option<CommandOutcome>, ShopError> {
        if ctx.fingerprint.is_none() {
            return Ok(None);
        }
        handler
            .repeat_of(stream, ctx)
            .await
            .map_err(|e| command_error(e, rule))
    }

    /// Runs a catalog command on `sku`'s product, timed as `kind`.
    async fn product_command(
        &self,
        kind: &str,
        sku: &str,
        command: ProductCommand,
        ctx: CommandContext,
    ) -> Result<CommandOutcome, ShopError> {
        self.timed(kind, async {
            let stream = product_stream(sku)?;
            if let Some(first) = Self::repeat(&self.products, &stream, &ctx, product_rule).await? {
                return Ok(first);
            }
            self.products
                .handle(stream, command, ctx)
                .await
                .map_err(|e| command_error(e, product_rule))
        })
        .await
    }

    /// The product `sku` as it stands; `NotFound` if it was never
    /// registered.
    async fn registered_product(&self, sku: &str) -> Result<Product, ShopError> {
        let (product, version) = self
            .products
            .load(&product_stream(sku)?)
            .await
            .map_err(|e| command_error(e, product_rule))?;
        if version == 0 {
            return Err(ShopError::NotFound(format!("unknown sku {sku}")));
        }
        Ok(product)
    }

    /// Registers a product.
    pub async fn register_product(
        &self,
        sku: &str,
        name: &str,
        price_cents: i64,
        ctx: CommandContext,
    ) -> Result<CommandOutcome, ShopError> {
        let command = ProductCommand::Register {
            sku: sku.to_owned(),
            name: name.to_owned(),
            price_cents,
        };
        self.product_command("register_product", sku, command, ctx)
            .await
    }

    /// Changes a product's price.
    pub async fn change_price(
        &self,
        sku: &str,
        price_cents: i64,
        ctx: CommandContext,
    ) -> Result<CommandOutcome, ShopError> {
        let command = ProductCommand::ChangePrice { price_cents };
        self.product_command("change_price", sku, command, ctx)
            .await
    }

    /// Discontinues a product.
    pub async fn discontinue(
        &self,
        sku: &str,
        ctx: CommandContext,
    ) -> Result<CommandOutcome, ShopError> {
        self.product_command("discontinue", sku, ProductCommand::Discontinue, ctx)
            .await
    }

    /// Adds stock of a registered product.
    pub async fn restock(
        &self,
        sku: &str,
        quantity: u32,
        ctx: CommandContext,
    ) -> Result<CommandOutcome, ShopError> {
        self.timed("restock", async {
            let stream = inventory_stream(sku)?;
            if let Some(first) =
                Self::repeat(&self.inventory, &stream, &ctx, inventory_rule).await?
            {
                return Ok(first);
            }
            self.product_exists(sku).await?;
            self.inventory
                .handle(
                    stream,
                    InventoryCommand::Restock {
                        sku: sku.to_owned(),
                        quantity,
                    },
                    ctx,
                )
                .await
                .map_err(|e| command_error(e, inventory_rule))
        })
        .await
    }

    /// Places an order at the catalog's current prices.
    pub async fn place_order(
        &self,
        order_id: Uuid,
        customer_id: &str,
        lines: &[LineRequest],
        ctx: CommandContext,
    ) -> Result<CommandOutcome, ShopError> {
        self.timed("place_order", async {
            let stream = order_stream(order_id);
            if let Some(first) = Self::repeat(&self.orders, &stream, &ctx, order_rule).await? {
                return Ok(first);
            }
            let mut priced = Vec::with_capacity(lines.len());
            for line in lines {
                let product = self.registered_product(&line.sku).await?;
                if product.status() == crate::domain::catalog::ProductStatus::Discontinued {
                    return Err(ShopError::Rule(format!("{} is discontinued", line.sku)));
                }
                priced.push(OrderLine {
                    sku: line.sku.clone(),
                    quantity: line.quantity,
                    unit_price_cents: product.price_cents(),
                });
            }
            // A new order's stream is empty: decided without reading it
            // (a repeated or reused id is caught by the append).
            self.orders
                .handle_new(
                    stream,
                    OrderCommand::Place {
                        order_id,
                        customer_id: customer_id.to_owned(),
                        lines: priced,
                    },
                    ctx,
                )
                .await
                .map_err(|e| command_error(e, order_rule))
        })
        .await
    }

    /// Pays a confirmed order: records a payment attempt, charges the
    /// gateway with a key derived from the attempt, records the result.
    ///
    /// At most one charge per attempt, whatever the timing or crash point:
    /// - the attempt (`PaymentStarted`) is appended in the order's lane at
    ///   the version the command saw, before the gateway is called, and an
    ///   order has one attempt in progress at a time: a concurrent pay with
    ///   another key is refused (`PaymentInProgress`) before it reaches the
    ///   gateway;
    /// - the gateway is called with the attempt's key, which it honours
    ///   (same key, same result, one charge): requests with the same
    ///   Idempotency-Key share one attempt and one charge;
    /// - the result is recorded under a command id derived from the
    ///   attempt, so whoever completes an attempt records it once;
    /// - a retry (same key) after a failure between the charge and the
    ///   record finds its attempt without a result and completes it with
    ///   the same gateway key: no second charge. An attempt left without a
    ///   result for [`PAYMENT_TAKEOVER_AFTER`] is completed the same way by
    ///   a pay with any key.
    pub async fn pay(
        &self,
        order_id: Uuid,
        ctx: CommandContext,
    ) -> Result<CommandOutcome, ShopError> {
        self.timed("pay", async {
            let stream = order_stream(order_id);
            // 1. This request's attempt (a repeat of its Idempotency-Key),
            //    or a new one.
            let (attempt_id, started) =
                match Self::repeat(&self.orders, &stream, &ctx, order_rule).await? {
                    Some(_) => (ctx.command_id, None),
                    None => self.start_payment(order_id, &stream, &ctx).await?,
                };
            let result_ctx = payment_result_context(attempt_id, &ctx);
            let amount = match started {
                // Started by this request just now: no result yet, and its
                // amount is the one recorded.
                Some(amount) => amount,
                None => {
                    // 2. Its result, if recorded: the first outcome.
                    if let Some(recorded) = self.payment_result(&stream, &result_ctx).await? {
                        return recorded;
                    }
                    let (order, _) = self
                        .orders
                        .load(&stream)
                        .await
                        .map_err(|e| command_error(e, order_rule))?;
                    match order.payment_attempt() {
                        Some(a) if a.attempt_id == attempt_id => a.amount_cents,
                        // Ended meanwhile by a concurrent completion: its result.
                        _ => {
                            return match self.payment_result(&stream, &result_ctx).await? {
                                Some(recorded) => recorded,
                                None => Err(ShopError::Rule(format!(
                                    "cannot pay an order that is {}",
                                    order.status()
                                ))),
                            }
                        }
                    }
                }
            };
            // 3. Charge (once per attempt, by the gateway's key) and record.
            let charged = self
                .gateway
                .charge(payment_key(attempt_id), order_id, amount)
                .await;
            let (command, declined) = match charged {
                Ok(payment_ref) => (
                    OrderCommand::Pay {
                        amount_cents: amount,
                        payment_ref,
                    },
                    None,
                ),
                Err(declined) => {
                    let reason = declined.to_string();
                    (
                        OrderCommand::FailPayment {
                            reason: reason.clone(),
                        },
                        Some(reason),
                    )
                }
            };
            let outcome = self
                .orders
                .handle(stream, command, result_ctx)
                .await
                .map_err(|e| command_error(e, order_rule))?;
            match declined {
                None => Ok(outcome),
                Some(reason) => Err(ShopError::PaymentDeclined { reason, outcome }),
            }
        })
        .await
    }

    /// Starts a payment attempt for `ctx`'s request, or takes over one left
    /// without a result for too long. Returns the attempt's id, and its
    /// amount when this call recorded its start (an attempt taken over, or
    /// started by a concurrent request with the same key, may have a
    /// result already).
    async fn start_payment(
        &self,
        order_id: Uuid,
        stream: &StreamId,
        ctx: &CommandContext,
    ) -> Result<(Uuid, Option<i64>), ShopError> {
        let (order, version) = self
            .orders
            .load(stream)
            .await
            .map_err(|e| command_error(e, order_rule))?;
        if version == 0 {
            return Err(ShopError::NotFound(format!("unknown order {order_id}")));
        }
        // Before anything about the order is told: is it the caller's?
        authorized(
            &order,
            &OrderCommand::StartPayment {
                attempt_id: ctx.command_id,
            },
            ctx,
        )?;
        if let Some(a) = order.payment_attempt() {
            if self.abandoned(a.attempt_id).await? {
                tracing::warn!(order = %order_id, attempt = %a.attempt_id, "completing a payment attempt left without a result");
                return Ok((a.attempt_id, None));
            }
        }
        if order.status() != OrderStatus::Confirmed {
            return Err(ShopError::Rule(format!(
                "cannot pay an order that is {}",
                order.status()
            )));
        }
        let outcome = self
            .orders
            .handle(
                stream.clone(),
                OrderCommand::StartPayment {
                    attempt_id: ctx.command_id,
                },
                ctx.clone(),
            )
            .await
            .map_err(|e| command_error(e, order_rule))?;
        // The order's total is fixed once it is placed, and the attempt
        // records it.
        let started = (outcome.events > 0 && !outcome.duplicate).then(|| order.total_cents());
        Ok((ctx.command_id, started))
    }

    /// True when the attempt started longer than [`PAYMENT_TAKEOVER_AFTER`] ago.
    async fn abandoned(&self, attempt_id: Uuid) -> Result<bool, ShopError> {
        let started = self
            .store
            .events_by_id(&[strata::derived_event_id(attempt_id, 0)])
            .await
            .map_err(|e| ShopError::Unavailable(e.to_string()))?;
        Ok(started.first().is_some_and(|e| {
            let age = chrono::Utc::now().signed_duration_since(e.recorded_at);
            age.to_std().is_ok_and(|age| age >= PAYMENT_TAKEOVER_AFTER)
        }))
    }

    /// The recorded result of a payment attempt, as the first outcome.
    async fn payment_result(
        &self,
        stream: &StreamId,
        result_ctx: &CommandContext,
    ) -> Result<Option<Result<CommandOutcome, ShopError>>, ShopError> {
        let found = self
            .store
            .events_by_id(&[strata::derived_event_id(result_ctx.command_id, 0)])
            .await
            .map_err(|e| ShopError::Unavailable(e.to_string()))?;
        let Some(e) = found.into_iter().next() else {
            return Ok(None);
        };
        if e.stream_id != *stream {
            return Err(ShopError::Conflict(
                "the Idempotency-Key was used for another request".into(),
            ));
        }
        let outcome = CommandOutcome {
            stream_id: stream.clone(),
            stream_version: e.stream_version,
            position: e.position,
            events: 1,
            duplicate: true,
        };
        if e.event_type == "PaymentFailed" {
            let reason = e.payload["reason"]
                .as_str()
                .unwrap_or("declined")
                .to_owned();
            return Ok(Some(Err(ShopError::PaymentDeclined { reason, outcome })));
        }
        Ok(Some(Ok(outcome)))
    }

    /// Cancels an order (reservations are released by the process manager).
    pub async fn cancel(
        &self,
        order_id: Uuid,
        reason: &str,
        ctx: CommandContext,
    ) -> Result<CommandOutcome, ShopError> {
        self.timed("cancel", async {
            let stream = order_stream(order_id);
            if let Some(first) = Self::repeat(&self.orders, &stream, &ctx, order_rule).await? {
                return Ok(first);
            }
            let (order, version) = self
                .orders
                .load(&stream)
                .await
                .map_err(|e| command_error(e, order_rule))?;
            if version == 0 {
                return Err(ShopError::NotFound(format!("unknown order {order_id}")));
            }
            let command = OrderCommand::Cancel {
                reason: reason.to_owned(),
            };
            authorized(&order, &command, &ctx)?;
            self.orders
                .handle(stream, command, ctx)
                .await
                .map_err(|e| command_error(e, order_rule))
        })
        .await
    }
}

/// The fulfilment process manager: reserves stock for placed orders,
/// confirms or rejects them, ships paid ones, releases stock of cancelled
/// ones (rules in `domain::fulfilment`).
#[derive(Debug, Clone, Copy, Default)]
pub struct Fulfilment;

impl ProcessManager for Fulfilment {
    type Event = ShopEvent;
    type Command = FulfilmentCommand;

    fn name(&self) -> &str {
        "fulfilment"
    }

    fn react(&self, e: Recorded<'_, ShopEvent>) -> Result<Vec<FulfilmentCommand>, ProjectionError> {
        Ok(react(e.event))
    }
}

impl<S: EventStore> CommandSender<FulfilmentCommand> for Shop<S> {
    /// Keeps the order and stock states this process holds up with the
    /// command API's appends, which the process manager sees on its
    /// subscription: a shipment is decided on the order as paid, a
    /// reservation on the stock as restocked, without a read or a conflict.
    fn observe(&self, event: &strata::EventEnvelope) {
        if !self.orders.observe(event) {
            self.inventory.observe(event);
        }
    }

    async fn send(&self, command: FulfilmentCommand, ctx: CommandContext) -> Result<(), SendError> {
        match command {
            FulfilmentCommand::Inventory { sku, command } => {
                let stream = inventory_stream(&sku).map_err(SendError::rejected)?;
                match self.inventory.handle(stream, command, ctx).await {
                    Ok(_) => Ok(()),
                    Err(e) => Err(SendError::from_command(e)),
                }
            }
            FulfilmentCommand::Order { order_id, command } => {
                let late_reservation = match &command {
                    OrderCommand::RecordReservation { sku } => Some(sku.clone()),
                    _ => None,
                };
                match self
                    .orders
                    .handle(order_stream(order_id), command, ctx.clone())
                    .await
                {
                    Ok(_) => Ok(()),
                    Err(CommandError::Domain(OrderError::InvalidTransition { .. }))
                        if late_reservation.is_some() =>
                    {
                        // The order was rejected or cancelled before this
                        // reservation landed: give the stock back.
                        let sku = late_reservation.unwrap_or_default();
                        let release_ctx = CommandContext::with_command_id(Uuid::new_v5(
                            &ctx.command_id,
                            b"release-late-reservation",
                        ))
                        // Caused by the event the manager reacted to (the
                        // late reservation), like every command it sends.
                        .causation_id(ctx.causation_id.unwrap_or(ctx.command_id))
                        .actor("fulfilment");
                        let release_ctx = match ctx.correlation_id {
                            Some(c) => release_ctx.correlation_id(c),
                            None => release_ctx,
                        };
                        let stream: StreamId =
                            inventory_stream(&sku).map_err(SendError::rejected)?;
                        match self
                            .inventory
                            .handle(
                                stream,
                                InventoryCommand::Release { sku, order_id },
                                release_ctx,
                            )
                            .await
                        {
                            Ok(_) => Ok(()),
                            Err(e) => Err(SendError::from_command(e)),
                        }
                    }
                    Err(e) => Err(SendError::from_command(e)),
                }
            }
        }
    }
}
