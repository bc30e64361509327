//! The engine's thread: a loop that takes records and commands from the handles and results
//! from the Tokio tasks that perform I/O, feeds them to the engine of each stream, performs
//! the actions they return, and sleeps until the next deadline.
//!
//! One thread, one client, one buffer bound and one in-flight limit serve every stream the
//! producer writes to; each stream has its own [`Engine`] (shard map, limiters, aggregates,
//! settings). The producer's own stream is slot 0 and lives as long as the producer; another
//! stream gets a slot on its first record (its engine reads the stream first, see
//! `engine/discovery.rs`) and loses it after `stream_idle_timeout` without records.
//!
//! Only streams with something to do are polled: those that received input since the last
//! poll, those whose deadline is due (a heap of deadlines, stale entries skipped), and, when a
//! request of any stream answers, the stream that waited longest for in-flight room.

mod ingest;
mod io;

use super::streams::{Registry, StreamEntry};
use crate::buffer::BufferGauge;
use crate::config::{ProducerConfig, StreamRef};
use crate::engine::{Action, Engine, EngineSettings, Entry};
use crate::kinesis::{ClientError, Kinesis, PutRecordsResultEntry, StreamSummary};
use crate::metrics::Metrics;
use crate::shard_map::ShardInfo;
use crate::stats::SharedStats;
use crate::stream_settings::{LiveSettings, StreamSettings};
use crossbeam_channel::{Receiver, Sender};
pub(super) use io::with_timeout;
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::sync::atomic::AtomicUsize;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::oneshot;

/// Longest wait of the engine loop when nothing is scheduled.
const IDLE_WAIT: Duration = Duration::from_secs(1);
/// Entries of the driver's cache of recently seen stream names.
const RECENT: usize = 16;

pub(super) enum Msg {
    Record(Entry),
    Flush(oneshot::Sender<()>),
    Shutdown(oneshot::Sender<()>),
}

/// A result of I/O for the engine of slot `.0` (generation `.1`).
pub(super) struct Event(usize, u64, EventKind);

enum EventKind {
    Response(u64, Result<Vec<PutRecordsResultEntry>, ClientError>),
    ShardMap(Result<Vec<ShardInfo>, ClientError>),
    StreamSettings(Result<StreamSummary, ClientError>),
}

/// What every stream's engine shares, and what a new one is made from.
pub(super) struct Shared {
    pub config: ProducerConfig,
    pub gauge: Arc<BufferGauge>,
    pub kinesis: Arc<dyn Kinesis>,
    pub runtime: tokio::runtime::Handle,
    pub on_failure: Option<super::FailureCallback>,
    pub dead_letters: Option<crate::dead_letter::DeadLetterSender>,
    pub registry: Arc<Registry>,
    /// Requests in flight, all streams together.
    pub requests: Arc<AtomicUsize>,
}

/// One stream's engine and its place in the loop's scheduling.
struct Slot {
    engine: Engine,
    stream: StreamRef,
    name: Arc<str>,
    generation: u64,
    /// The deadline this slot has in the heap.
    due: Option<Instant>,
    touched: bool,
    waiting_for_room: bool,
    /// Since when it holds nothing (streams other than the producer's own are released after
    /// `stream_idle_timeout`).
    idle_since: Option<Instant>,
}

/// The engine's thread: moves messages in, performs actions, sleeps until the next deadline.
pub(super) struct Driver {
    shared: Shared,
    slots: Vec<Option<Slot>>,
    free: Vec<usize>,
    by_name: HashMap<Arc<str>, usize, foldhash::fast::RandomState>,
    /// Slots of recently seen stream names, by the address of the record's `Arc`: a caller
    /// that keeps its `Arc`s finds the slot with one pointer comparison, without hashing and
    /// comparing the name per record. A cached `Arc` is kept alive, so its address cannot
    /// come back for another name.
    recent: [Option<(Arc<str>, usize)>; RECENT],
    next_generation: u64,
    /// (deadline, slot, generation), earliest first; an entry whose deadline is no longer its
    /// slot's is skipped.
    heap: BinaryHeap<Reverse<(Instant, usize, u64)>>,
    touched: VecDeque<usize>,
    waiting_for_room: VecDeque<usize>,
    events_tx: Sender<Event>,
    actions: Vec<Action>,
    /// `shutdown()` was called, or every handle is gone.
    shutting_down: bool,
    /// Flush and shutdown replies that wait for several streams' engines (checked after each
    /// pass: the engines answer during their polls). Joined here, not in a task, so that they
    /// are answered even when the runtime that ran the requests is gone.
    joins: Vec<(Vec<oneshot::Receiver<()>>, oneshot::Sender<()>)>,
    /// Messages taken from the ingest channel, not yet handled (see [`Driver::take`]).
    /// (With the shard index of a record of the producer's own stream.)
    lookahead: VecDeque<(Msg, Option<usize>)>,
}

impl Driver {
    /// Starts the engine's thread with the producer's own stream's engine; returns the channel
    /// the handles feed.
    pub(super) fn spawn(
        shared: Shared,
        engine: Engine,
        stream: StreamRef,
    ) -> std::io::Result<Sender<Msg>> {
        let (tx, rx) = crossbeam_channel::unbounded();
        let (events_tx, events_rx) = crossbeam_channel::unbounded();
        let name = format!("kinesis-producer:{}", stream.as_str());
        let mut driver = Driver {
            shared,
            slots: Vec::new(),
            free: Vec::new(),
            by_name: HashMap::default(),
            recent: Default::default(),
            next_generation: 0,
            heap: BinaryHeap::new(),
            touched: VecDeque::new(),
            waiting_for_room: VecDeque::new(),
            events_tx,
            actions: Vec::new(),
            shutting_down: false,
            joins: Vec::new(),
            lookahead: VecDeque::with_capacity(ingest::LOOKAHEAD + 1),
        };
        driver.add_slot(engine, stream);
        std::thread::Builder::new()
            .name(name)
            .spawn(move || driver.run(rx, events_rx))?;
        Ok(tx)
    }

    fn add_slot(&mut self, engine: Engine, stream: StreamRef) -> usize {
        let name: Arc<str> = stream.as_str().into();
        self.next_generation += 1;
        let slot = Slot {
            engine,
            stream,
            name: name.clone(),
            generation: self.next_generation,
            due: None,
            touched: false,
            waiting_for_room: false,
            idle_since: None,
        };
        let i = match self.free.pop() {
            Some(i) => {
                self.slots[i] = Some(slot);
                i
            }
            None => {
                self.slots.push(Some(slot));
                self.slots.len() - 1
            }
        };
        self.by_name.insert(name, i);
        // Polled at once: its first poll schedules its reads and timers.
        self.touch(i);
        i
    }

    /// The slot of the stream a record names (made on the first record that names it).
    fn slot_for(&mut self, name: &Arc<str>, now: Instant) -> usize {
        let at = (Arc::as_ptr(name) as *const u8 as usize >> 4) % RECENT;
        if let Some((seen, i)) = &self.recent[at] {
            if Arc::ptr_eq(seen, name) {
                return *i;
            }
        }
        let i = match self.by_name.get(name) {
            Some(&i) => i,
            None => self.open_stream(name, now),
        };
        self.recent[at] = Some((name.clone(), i));
        i
    }

    /// A slot for a stream seen for the first time (or again after its release).
    fn open_stream(&mut self, name: &Arc<str>, now: Instant) -> usize {
        let stream = StreamRef::parse(name);
        let config = &self.shared.config;
        let settings = StreamSettings::default();
        let request_bytes = config.request_bytes_for(settings.stream_record_limit());
        let live = Arc::new(LiveSettings::new(
            settings,
            settings.record_limit(request_bytes),
        ));
        let stats = SharedStats::new(now);
        let mut s = EngineSettings::new(config, stream.clone(), settings, live.clone());
        s.on_failure = self.shared.on_failure.clone();
        s.dead_letters = self.shared.dead_letters.clone();
        s.requests = self.shared.requests.clone();
        let metrics = Metrics::new(name, config.metrics_granularity);
        let mut engine =
            Engine::discovering(s, self.shared.gauge.clone(), stats.clone(), metrics, now);
        if self.shutting_down {
            engine.on_shutdown(None, now);
        }
        self.shared.registry.insert(StreamEntry {
            name: name.clone(),
            stats,
            live,
        });
        self.add_slot(engine, stream)
    }

    fn slot(&mut self, i: usize) -> &mut Slot {
        self.slots[i].as_mut().expect("live slot")
    }

    /// Slot `i` is polled at the next pass.
    fn touch(&mut self, i: usize) {
        let slot = self.slot(i);
        if !slot.touched {
            slot.touched = true;
            self.touched.push_back(i);
        }
    }

    fn live_slots(&self) -> impl Iterator<Item = usize> + '_ {
        self.slots
            .iter()
            .enumerate()
            .filter_map(|(i, s)| s.as_ref().map(|_| i))
    }

    fn run(mut self, ingest: Receiver<Msg>, events: Receiver<Event>) {
        let mut ingest = Some(ingest);
        loop {
            let now = Instant::now();
            self.poll_due(now);
            if !self.joins.is_empty() {
                self.answer_joins();
            }
            if self.shutting_down && self.slots.iter().flatten().all(|s| s.engine.is_finished()) {
                break;
            }
            let wait = self.next_deadline().map_or(IDLE_WAIT, |d| {
                d.saturating_duration_since(Instant::now()).min(IDLE_WAIT)
            });
            let never = crossbeam_channel::never();
            let intake = ingest.as_ref().unwrap_or(&never);
            crossbeam_channel::select! {
                recv(intake) -> msg => match msg {
                    Ok(msg) => self.ingest(msg, intake, Instant::now()),
                    Err(_) => {
                        // Every handle is gone: drain in the background, then stop.
                        ingest = None;
                        self.shut_down(None, Instant::now());
                    }
                },
                recv(events) -> ev => {
                    if let Ok(ev) = ev {
                        self.on_event(ev);
                        while let Ok(ev) = events.try_recv() {
                            self.on_event(ev);
                        }
                    }
                },
                default(wait) => {}
            }
        }
    }

    /// Polls the slots touched since the last pass and those whose deadline is due.
    fn poll_due(&mut self, now: Instant) {
        while let Some(&Reverse((at, i, generation))) = self.heap.peek() {
            if at > now {
                break;
            }
            self.heap.pop();
            let live = self.slots[i]
                .as_ref()
                .is_some_and(|s| s.generation == generation && s.due == Some(at));
            if live {
                self.slot(i).due = None;
                self.touch(i);
            }
        }
        while let Some(i) = self.touched.pop_front() {
            self.poll_slot(i, now);
        }
    }

    fn poll_slot(&mut self, i: usize, now: Instant) {
        let mut actions = std::mem::take(&mut self.actions);
        let slot = self.slot(i);
        slot.touched = false;
        slot.engine.poll(now, &mut actions);
        for action in actions.drain(..) {
            self.perform(i, action);
        }
        self.actions = actions;
        let idle_timeout = self.shared.config.stream_idle_timeout;
        let slot = self.slots[i].as_mut().expect("live slot");
        let mut next = slot.engine.next_deadline();
        if i != 0 && !self.shutting_down {
            if slot.engine.is_idle() {
                let since = *slot.idle_since.get_or_insert(now);
                if now.saturating_duration_since(since) >= idle_timeout {
                    self.release(i);
                    return;
                }
                let release_at = since + idle_timeout;
                next = Some(next.map_or(release_at, |t| t.min(release_at)));
            } else {
                slot.idle_since = None;
            }
        }
        if let Some(at) = next {
            if slot.due.is_none_or(|d| at < d) {
                slot.due = Some(at);
                self.heap.push(Reverse((at, i, slot.generation)));
            }
        }
        if slot.engine.wants_room() && !slot.waiting_for_room {
            slot.waiting_for_room = true;
            self.waiting_for_room.push_back(i);
        }
    }

    /// An idle stream's engine is dropped; its counters stay in the producer's totals.
    fn release(&mut self, i: usize) {
        let slot = self.slots[i].take().expect("live slot");
        self.by_name.remove(&slot.name);
        for seen in &mut self.recent {
            if seen.as_ref().is_some_and(|(_, s)| *s == i) {
                *seen = None;
            }
        }
        self.shared.registry.remove(&slot.name);
        slot.engine.release();
        self.free.push(i);
    }

    fn next_deadline(&self) -> Option<Instant> {
        if !self.touched.is_empty() {
            return Some(Instant::now());
        }
        self.heap.peek().map(|Reverse((at, ..))| *at)
    }

    /// Every stream's engine drains and stops; `reply` fires when all have.
    fn shut_down(&mut self, reply: Option<oneshot::Sender<()>>, now: Instant) {
        self.shutting_down = true;
        let slots: Vec<usize> = self.live_slots().collect();
        let mut replies = Vec::with_capacity(slots.len());
        for i in slots {
            let (tx, rx) = oneshot::channel();
            self.slot(i).engine.on_shutdown(Some(tx), now);
            self.touch(i);
            replies.push(rx);
        }
        if let Some(reply) = reply {
            self.joins.push((replies, reply));
        }
    }

    /// Answers the flush and shutdown replies whose engines have all answered.
    fn answer_joins(&mut self) {
        let mut i = 0;
        while i < self.joins.len() {
            let replies = &mut self.joins[i].0;
            replies
                .retain_mut(|rx| matches!(rx.try_recv(), Err(oneshot::error::TryRecvError::Empty)));
            if replies.is_empty() {
                let (_, reply) = self.joins.swap_remove(i);
                let _ = reply.send(());
            } else {
                i += 1;
            }
        }
    }

    fn on_event(&mut self, Event(i, generation, kind): Event) {
        let live = self.slots.get(i).and_then(|s| s.as_ref());
        if live.is_none_or(|s| s.generation != generation) {
            return; // a read answered after its stream was released
        }
        let now = Instant::now();
        let engine = &mut self.slot(i).engine;
        match kind {
            EventKind::Response(id, result) => {
                engine.on_response(id, result, now);
                // A request answered: room in flight for the stream that waited longest.
                while let Some(j) = self.waiting_for_room.pop_front() {
                    // A slot released (or reused) since it queued is skipped.
                    if let Some(slot) = self.slots[j].as_mut().filter(|s| s.waiting_for_room) {
                        slot.waiting_for_room = false;
                        self.touch(j);
                        break;
                    }
                }
            }
            EventKind::ShardMap(result) => engine.on_shard_map(result, now),
            EventKind::StreamSettings(result) => engine.on_stream_settings(result, now),
        }
        self.touch(i);
    }
}
