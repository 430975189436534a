//! Batch consumption. `BaseConsumer::poll` hands out one message per call, each wrapped in an
//! event, a reference-counted handle and a clock read; at a few hundred thousand records a
//! second that is a sizeable share of the consumer thread. Here every assigned partition's
//! fetch queue is forwarded to one queue campo owns, which is drained with
//! `rd_kafka_consume_batch_queue`: up to a batch of messages per call, in partition order.
//! The consumer's own queue still carries rebalances, errors and statistics, so the consumer
//! keeps polling it.
//!
//! librdkafka keeps a forward the application set (`rd_kafka_queue_forward`) when it starts
//! fetching a partition, so the route must be set before `assign`: [`BatchQueue::route`] is
//! called from the rebalance callback right before it assigns. A seek works as with `poll`: it
//! bumps the partition's version, and `rd_kafka_consume_batch_queue` drops messages fetched
//! under an older version. The prefetch bounds (`queued.max.messages.kbytes`,
//! `queued.min.messages`) apply to this queue as a whole: a fetch queue forwarded here reports
//! this queue's length and size.

use std::ffi::{CStr, CString};
use std::marker::PhantomData;
use std::ptr::NonNull;
use std::time::Duration;

use rdkafka::bindings as rd;
use rdkafka::client::{Client, ClientContext};
use rdkafka::error::RDKafkaErrorCode;
use rdkafka::topic_partition_list::TopicPartitionList;

/// A queue owned by the application, fed by the fetch queues of the partitions routed to it.
/// It borrows the client: it must be destroyed before the client is.
pub struct BatchQueue<'c> {
    rk: NonNull<rd::rd_kafka_t>,
    queue: NonNull<rd::rd_kafka_queue_t>,
    /// Reused between calls.
    buf: Vec<*mut rd::rd_kafka_message_t>,
    _client: PhantomData<&'c ()>,
}

/// One consumed message, valid for the duration of the callback.
pub struct RawMessage<'m> {
    msg: &'m rd::rd_kafka_message_t,
}

impl RawMessage<'_> {
    /// A consume error reported for a partition (the message then carries no record).
    pub fn error(&self) -> Option<RDKafkaErrorCode> {
        (self.msg.err != rd::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR).then(|| self.msg.err.into())
    }

    /// The topic handle: stable for the client's life, so it can key a cache of per-topic
    /// lookups instead of comparing names for every message.
    pub fn topic_handle(&self) -> usize {
        self.msg.rkt as usize
    }

    pub fn topic(&self) -> &str {
        if self.msg.rkt.is_null() {
            return "";
        }
        // SAFETY: `rkt` is the message's live topic handle; librdkafka returns its name as a
        // NUL-terminated string that lives as long as the handle.
        unsafe { CStr::from_ptr(rd::rd_kafka_topic_name(self.msg.rkt)) }.to_str().unwrap_or("")
    }

    pub fn partition(&self) -> i32 {
        self.msg.partition
    }

    pub fn offset(&self) -> i64 {
        self.msg.offset
    }

    /// The record's value; `None` for a tombstone.
    pub fn payload(&self) -> Option<&[u8]> {
        if self.msg.payload.is_null() {
            return None;
        }
        // SAFETY: librdkafka guarantees `payload` points to `len` readable bytes for as long as
        // the message is not destroyed, which is after the callback returns.
        Some(unsafe { std::slice::from_raw_parts(self.msg.payload as *const u8, self.msg.len) })
    }
}

// SAFETY: librdkafka's queue and client handles are thread-safe; the queue is used through
// `&mut self` only.
unsafe impl Send for BatchQueue<'_> {}

impl<'c> BatchQueue<'c> {
    pub fn new<C: ClientContext>(client: &'c Client<C>) -> Self {
        let rk = NonNull::new(client.native_ptr()).expect("live client");
        // SAFETY: `rk` is a live client; rd_kafka_queue_new never returns NULL (it aborts on
        // allocation failure).
        let queue = NonNull::new(unsafe { rd::rd_kafka_queue_new(rk.as_ptr()) }).expect("rd_kafka_queue_new");
        BatchQueue { rk, queue, buf: Vec::new(), _client: PhantomData }
    }

    /// A handle for routing from the rebalance callback (see [`Router`]).
    pub fn router(&self) -> Router {
        Router { rk: self.rk.as_ptr() as usize, queue: self.queue.as_ptr() as usize }
    }

    /// Routes the partitions of `tpl` here; call before assigning them.
    pub fn route(&self, tpl: &TopicPartitionList) -> usize {
        self.router().route(tpl)
    }

    /// Waits up to `timeout` for a first message, then takes what is already there, up to
    /// `max` in all, in queue order. The messages live until the batch is dropped.
    pub fn take(&mut self, timeout: Duration, max: usize) -> Batch<'_> {
        self.buf.clear();
        if max > 0 {
            self.buf.resize(max, std::ptr::null_mut());
            let q = self.queue.as_ptr();
            let wait_ms = i32::try_from(timeout.as_millis()).unwrap_or(i32::MAX);
            // rd_kafka_consume_batch_queue waits for the whole batch or the timeout: one
            // message with the wait, the rest without it.
            // SAFETY: the queue is live (owned by self), and `buf` has room for `max` pointers.
            let first = unsafe { rd::rd_kafka_consume_batch_queue(q, wait_ms, self.buf.as_mut_ptr(), 1) };
            let mut n = first.max(0) as usize;
            if n == 1 && max > 1 {
                // SAFETY: as above; the slots after the first one hold `max - 1` pointers.
                let more = unsafe { rd::rd_kafka_consume_batch_queue(q, 0, self.buf.as_mut_ptr().add(1), max - 1) };
                n += more.max(0) as usize;
            }
            self.buf.truncate(n);
        }
        Batch { msgs: &mut self.buf }
    }
}

impl Drop for BatchQueue<'_> {
    fn drop(&mut self) {
        // Partitions still routed here keep a reference to the queue; destroying the owner's
        // handle disables it, so librdkafka drops what is fetched into it afterwards.
        // SAFETY: the queue handle is ours and destroyed once; the client outlives it ('c).
        unsafe { rd::rd_kafka_queue_destroy(self.queue.as_ptr()) }
    }
}

/// Messages taken by [`BatchQueue::take`]; destroyed when the batch is dropped.
pub struct Batch<'q> {
    msgs: &'q mut Vec<*mut rd::rd_kafka_message_t>,
}

impl Batch<'_> {
    pub fn len(&self) -> usize {
        self.msgs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.msgs.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = RawMessage<'_>> {
        // SAFETY: every pointer is a valid message from rd_kafka_consume_batch_queue, destroyed
        // only when the batch is dropped, which the borrow of `self` outlives.
        self.msgs.iter().map(|&m| RawMessage { msg: unsafe { &*m } })
    }
}

impl Drop for Batch<'_> {
    fn drop(&mut self) {
        for m in self.msgs.drain(..) {
            // SAFETY: each message was returned by rd_kafka_consume_batch_queue and is
            // destroyed exactly once, here.
            unsafe { rd::rd_kafka_message_destroy(m) }
        }
    }
}

/// Routes partitions to a [`BatchQueue`] from where the queue itself is not at hand (the
/// rebalance callback). Holds raw addresses: the owner ([`Route`]) clears it before the queue
/// is destroyed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Router {
    rk: usize,
    queue: usize,
}

impl Router {
    /// Forwards each partition's fetch queue to the batch queue. Returns how many partitions
    /// were routed.
    pub fn route(&self, tpl: &TopicPartitionList) -> usize {
        let rk = self.rk as *mut rd::rd_kafka_t;
        let mut routed = 0;
        for e in tpl.elements() {
            let Ok(topic) = CString::new(e.topic()) else {
                continue;
            };
            // SAFETY: `rk` is live while the router is set (see `Route`); the partition queue
            // handle is destroyed right after the forward, which librdkafka keeps on the
            // partition's fetch queue itself.
            unsafe {
                let pq = rd::rd_kafka_queue_get_partition(rk, topic.as_ptr(), e.partition());
                if pq.is_null() {
                    tracing::warn!(
                        topic = e.topic(),
                        partition = e.partition(),
                        "no partition queue; its records arrive on the consumer queue"
                    );
                    continue;
                }
                rd::rd_kafka_queue_forward(pq, self.queue as *mut rd::rd_kafka_queue_t);
                rd::rd_kafka_queue_destroy(pq);
            }
            routed += 1;
        }
        routed
    }
}

/// Where a rebalance callback finds the current [`Router`], if any.
#[derive(Default, Debug)]
pub struct RouteSlot(std::sync::Mutex<Option<Router>>);

impl RouteSlot {
    /// Sets the slot to `queue` until the returned guard is dropped (which must happen before
    /// the queue is: declare the guard after the queue).
    pub fn set<'s>(&'s self, queue: &BatchQueue<'_>) -> Route<'s> {
        *self.0.lock().expect("route slot") = Some(queue.router());
        Route(self)
    }

    /// Routes `tpl` to the current queue; without one, records stay on the consumer queue.
    pub fn route(&self, tpl: &TopicPartitionList) -> usize {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).map_or(0, |r| r.route(tpl))
    }
}

/// Clears its [`RouteSlot`] when dropped.
pub struct Route<'s>(&'s RouteSlot);

impl Drop for Route<'_> {
    fn drop(&mut self) {
        *self.0.0.lock().unwrap_or_else(|e| e.into_inner()) = None;
    }
}
