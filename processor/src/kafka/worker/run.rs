//! The loop: poll, process, and look after deliveries, commits and restores every few
//! records.

use super::commit::abort;
use super::*;
use crate::runtime::ledger::Delivery;

/// Runs the pipeline until `status.shutdown` is set or a fatal error. `lane_engine`, a
/// second copy of a pipeline without state, runs in the transform lane; without it the
/// engine runs on the worker's thread.
pub fn run(
    opts: WorkerOptions,
    engine: Engine,
    lane_engine: Option<Engine>,
    status: Arc<Status>,
) -> Result<(), WorkerError> {
    let lane = match lane_engine {
        Some(e) if engine.aggregate_step().is_none() => Some(Lane::start(e)?),
        _ => None,
    };
    let mut pcfg = opts.settings.client_config();
    pcfg.set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", "5")
        .set("queue.buffering.max.kbytes", "65536");
    if let Some(r) = opts.produce_retries {
        // The idempotent producer needs at least one retry.
        pcfg.set("message.send.max.retries", r.max(1).to_string());
    }
    if opts.exactly_once {
        let timeout = transaction_timeout(opts.commit_interval);
        pcfg.set("transactional.id", &opts.transactional_id)
            .set("transaction.timeout.ms", timeout.as_millis().to_string());
    }
    let producer: BaseProducer<DeliveryTracker> = pcfg
        .create_with_context(DeliveryTracker::default())
        .map_err(WorkerError::Setup)?;
    if opts.exactly_once {
        producer
            .init_transactions(TXN_TIMEOUT)
            .map_err(WorkerError::Transaction)?;
    }
    let only_topic: Option<Arc<str>> = match opts.topics.as_slice() {
        [t] if !t.starts_with('^') => Some(Arc::from(t.as_str())),
        _ => None,
    };
    let core = Arc::new(Mutex::new(Core {
        engine,
        producer,
        opts: opts.clone(),
        status: status.clone(),
        ledger: Ledger::new(
            if opts.exactly_once {
                Delivery::ExactlyOnce
            } else {
                Delivery::AtLeastOnce
            },
            opts.commit_interval,
            Instant::now(),
        ),
        restoring: None,
        fatal: None,
        rewind_due: None,
        emits: Vec::new(),
        outputs: Vec::new(),
        buffers: Vec::new(),
        topics: only_topic.iter().cloned().collect(),
        only_topic,
        dead_lettered_logged: 0,
        lane,
        counted_in: 0,
        counted_out: 0,
    }));
    let ccfg = opts
        .settings
        .group_consumer_config(&opts.group_id, opts.start_from);
    let consumer: BaseConsumer<RebalanceHandler> = ccfg
        .create_with_context(RebalanceHandler { core: core.clone() })
        .map_err(WorkerError::Setup)?;
    let topics: Vec<&str> = opts.topics.iter().map(String::as_str).collect();
    consumer.subscribe(&topics).map_err(WorkerError::Setup)?;
    tracing::info!(group = %opts.group_id, topics = ?opts.topics, exactly_once = opts.exactly_once, transform_lane = lock(&core).lane.is_some(), "consuming");

    let result = run_loop(&consumer, &core, &status);
    let result = {
        let mut c = lock(&core);
        let result = result.and_then(|()| {
            c.drain_lane().and_then(|()| c.commit(&consumer)).map(|()| {
                c.producer.flush(TXN_TIMEOUT).ok();
            })
        });
        if result.is_err() && c.ledger.in_transaction() {
            // Nothing more is committed; what was processed since the last commit is
            // replayed by whoever takes over.
            abort(&c.producer).ok();
            c.ledger.discard(Instant::now());
        }
        // Whatever the lane still holds (after an error) is not handled: the revoke at
        // close must not produce and commit records past one that stopped the loop.
        c.lane = None;
        result
    };
    status.ready.store(false, Ordering::Relaxed);
    // Closing leaves the group (the revoke callback finds nothing left to commit).
    drop(consumer);
    lock(&core).publish_counts();
    result
}

fn run_loop(
    consumer: &BaseConsumer<RebalanceHandler>,
    core: &Arc<Mutex<Core>>,
    status: &Status,
) -> Result<(), WorkerError> {
    let mut since_housekeeping = 0u32;
    // Whether the transform lane holds records: then the consumer is not waited on.
    let mut lane_busy = false;
    // Whether a restore is under way: then the loop reads it rather than wait.
    let mut restoring = false;
    let mut pacer = lock(core).opts.rate_limit.map(Pacer::new);
    loop {
        if status.shutdown.load(Ordering::Relaxed) {
            return Ok(());
        }
        let timeout = if lane_busy || restoring {
            Duration::ZERO
        } else {
            Duration::from_millis(100)
        };
        // Under a rate limit, a record early for its slot is not polled yet: the loop
        // sleeps and does its housekeeping as when idle.
        let wait = pacer
            .as_ref()
            .map_or(Duration::ZERO, |p| p.wait(Instant::now()));
        let polled = if wait.is_zero() {
            consumer.poll(timeout)
        } else {
            std::thread::sleep(wait.min(MAX_PACING_SLEEP));
            None
        };
        let busy = matches!(polled, Some(Ok(_)));
        if let (true, Some(p)) = (busy, pacer.as_mut()) {
            p.took(Instant::now());
        }
        let mut c = lock(core);
        if let Some(e) = c.fatal.take() {
            return Err(e);
        }
        if let Some(e) = c.rewind_due.take() {
            // The record just polled is read again after the rewind.
            drop(polled);
            c.rewind(consumer, &e)?;
            lane_busy = false;
            continue;
        }
        match polled {
            Some(Ok(m)) => {
                if let Err(e) = c.queue(&m) {
                    drop(m);
                    recover(&mut c, consumer, e)?;
                }
            }
            Some(Err(e)) => tracing::warn!(error = %e, "consumer error"),
            None => {}
        }
        if c.lane.is_some() {
            if let Err(e) = c.collect(!busy) {
                recover(&mut c, consumer, e)?;
            }
            lane_busy = c.lane.as_ref().is_some_and(Lane::busy);
        }
        // Delivery reports, the commit timer and acknowledged checkpoints are looked at
        // every few records while busy (each look costs clock reads and locks), and at
        // every poll while idle.
        since_housekeeping += 1;
        if busy && since_housekeeping < HOUSEKEEPING_EVERY {
            continue;
        }
        since_housekeeping = 0;
        status.beat();
        c.advance_restore(consumer)?;
        restoring = c.restoring.is_some();
        c.publish_counts();
        c.producer.poll(Duration::ZERO);
        let ended = if c.due() {
            c.end_interval(consumer)
        } else if c.opts.exactly_once {
            Ok(())
        } else {
            c.commit_acked(consumer)
        };
        if let Err(e) = ended {
            if e.recoverable() {
                c.rewind(consumer, &e)?;
            } else {
                return Err(e);
            }
        }
    }
}

/// After a record could not be handled: rewinds when that can help; otherwise commits
/// what came before a record with nowhere to go, and stops.
fn recover(
    c: &mut Core,
    consumer: &BaseConsumer<RebalanceHandler>,
    e: WorkerError,
) -> Result<(), WorkerError> {
    if e.recoverable() {
        return c.rewind(consumer, &e);
    }
    if matches!(e, WorkerError::NoDeadLetter { .. }) {
        // Keep what came before the bad record.
        c.commit(consumer)?;
    }
    Err(e)
}
