//! The streaming scan: `unacked`, every queue list (with all priority sub-lists), `unacked`
//! again (for orphans a worker prefetched from a list meanwhile), and every result key, read in
//! bounded pages (HSCAN/LRANGE/SCAN + pipelined MGET/PTTL), classified a page at a time with one
//! owner lookup per rule per page. Memory holds one page, never the keyspace. Each entry carries
//! the time it was read, from which its grace period counts.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::cancel::Cancel;
use crate::classify::{pre_classify, Entry, RawEntry, State};
use crate::error::{EngineError, Result};
use crate::janitor::Janitor;
use crate::lock::RunLock;
use crate::progress::Progress;

/// At most this many examples of wrong-typed keys are kept.
const WRONG_TYPE_EXAMPLES: usize = 10;

/// Keys where Celery keeps a list, hash, zset, set or string that hold another type: skipped by
/// the scan (never removed), counted so `status` can show them.
#[derive(Debug, Clone, Default, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct WrongTypeKeys {
    pub count: u64,
    pub examples: Vec<WrongTypeKey>,
}

#[derive(Debug, Clone, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct WrongTypeKey {
    pub key: String,
    #[serde(rename = "type")]
    pub found: String,
    pub expected: String,
}

impl WrongTypeKeys {
    pub(crate) fn add(&mut self, key: &[u8], found: &str, expected: &str) {
        let key = crate::archive::printable(key);
        tracing::warn!(%key, r#type = %found, %expected, "key of the wrong type; skipped");
        self.count += 1;
        if self.examples.len() < WRONG_TYPE_EXAMPLES {
            self.examples.push(WrongTypeKey {
                key,
                found: found.to_owned(),
                expected: expected.to_owned(),
            });
        }
    }
}

/// What one scan needs besides the sink: progress, cancellation, and what it noticed.
pub(crate) struct ScanCtx<'a> {
    pub progress: &'a dyn Progress,
    pub cancel: &'a Cancel,
    pub wrong_types: WrongTypeKeys,
}

impl<'a> ScanCtx<'a> {
    pub(crate) fn new(progress: &'a dyn Progress, cancel: &'a Cancel) -> Self {
        ScanCtx {
            progress,
            cancel,
            wrong_types: WrongTypeKeys::default(),
        }
    }
}

/// Eight bytes standing for `bytes` where only "seen before?" matters (`unacked` fields read
/// twice, list messages read twice, task ids of live work): the same in every call of a process.
pub(crate) fn hash64(bytes: &[u8]) -> u64 {
    use std::hash::{BuildHasher, BuildHasherDefault, DefaultHasher};
    BuildHasherDefault::<DefaultHasher>::default().hash_one(bytes)
}

const PAGE: usize = 500;
/// How many recent messages of a list are remembered to skip repeats across pages.
const DEDUP_WINDOW: usize = 20 * PAGE;

/// Hashes of the last `cap` messages read from a list. A repeat inside the window is a message
/// seen twice because the list moved between page reads (or, rarely, two byte-identical
/// messages: the second is then left for the next run, which errs on the safe side).
struct RecentWindow {
    cap: usize,
    order: std::collections::VecDeque<u64>,
    seen: std::collections::HashSet<u64>,
}

impl RecentWindow {
    fn new(cap: usize) -> Self {
        RecentWindow {
            cap,
            order: Default::default(),
            seen: Default::default(),
        }
    }

    /// False if `raw` was seen within the window.
    fn insert(&mut self, raw: &[u8]) -> bool {
        let h = hash64(raw);
        if !self.seen.insert(h) {
            return false;
        }
        self.order.push_back(h);
        if self.order.len() > self.cap {
            if let Some(old) = self.order.pop_front() {
                self.seen.remove(&old);
            }
        }
        true
    }
}

impl Janitor {
    pub(crate) async fn scan(
        &self,
        ctx: &mut ScanCtx<'_>,
        sink: &mut (dyn FnMut(Entry) + Send),
    ) -> Result<()> {
        let mut seen_unacked = HashSet::new();
        let routing_keys = self
            .scan_unacked(ctx, &mut seen_unacked, false, sink)
            .await?;
        let lists = self.queue_lists(routing_keys, ctx).await?;
        for (key, queue) in &lists {
            self.scan_list(key, queue, ctx, sink).await?;
        }
        // A worker that prefetched an orphan from a list after `unacked` was read moved it out
        // of every place read so far; `unacked` is small, so read it once more for new fields.
        self.scan_unacked(ctx, &mut seen_unacked, true, sink)
            .await?;
        self.scan_results(ctx, sink).await?;
        Ok(())
    }

    /// Classifies a page read at `read_at`: one owner lookup per rule, then hands every entry to
    /// `sink`.
    async fn settle_page(
        &self,
        raws: Vec<RawEntry>,
        read_at: Instant,
        sink: &mut (dyn FnMut(Entry) + Send),
    ) -> Result<()> {
        let mut entries: Vec<Entry> = raws
            .into_iter()
            .map(|r| {
                let mut e = pre_classify(r, &self.settings.owners);
                e.read_at = Some(read_at);
                e
            })
            .collect();
        self.settle(&mut entries).await?;
        for e in entries {
            sink(e);
        }
        Ok(())
    }

    /// Looks up the owner rows of pending entries (and re-checks settled orphans), batched per rule.
    pub(crate) async fn settle(&self, entries: &mut [Entry]) -> Result<()> {
        let mut by_rule: HashMap<usize, BTreeSet<String>> = HashMap::new();
        for e in entries.iter() {
            if let (Some(rule), Some(id)) = (e.owner_rule, &e.owner_id) {
                if e.pending_owner().is_some() || e.state == State::Orphaned {
                    by_rule.entry(rule).or_default().insert(id.clone());
                }
            }
        }
        for (rule_idx, ids) in by_rule {
            let rule = &self.settings.owners.rules()[rule_idx];
            let ids: Vec<String> = ids.into_iter().collect();
            let lookup = self.db.lookup(rule_idx, rule, &ids).await?;
            for e in entries.iter_mut() {
                if e.owner_rule != Some(rule_idx) {
                    continue;
                }
                let pending = e.pending_owner().is_some() || e.state == State::Orphaned;
                let Some(id) = e.owner_id.clone().filter(|_| pending) else {
                    continue;
                };
                if let Some(why) = lookup.invalid.get(&id) {
                    e.state = State::Undecidable;
                    e.reason = Some(why.clone());
                } else {
                    e.settle(lookup.existing.contains(&id));
                }
            }
        }
        Ok(())
    }

    /// Reads `unacked`. The first pass records every field in `seen`; the second (`again`)
    /// classifies only fields the first did not see.
    async fn scan_unacked(
        &self,
        ctx: &mut ScanCtx<'_>,
        seen: &mut HashSet<u64>,
        again: bool,
        sink: &mut (dyn FnMut(Entry) + Send),
    ) -> Result<BTreeSet<String>> {
        let key = self.broker_layout.unacked_key();
        let index_key = self.broker_layout.unacked_index_key();
        let mut con = self.broker.con.clone();
        let mut routing_keys = BTreeSet::new();
        let types = self.broker.types(&[key.clone(), index_key.clone()]).await?;
        if !again && !matches!(types[1].as_str(), "zset" | "none") {
            ctx.wrong_types.add(&index_key, &types[1], "zset");
        }
        if types[0] != "hash" {
            if !again && types[0] != "none" {
                ctx.wrong_types.add(&key, &types[0], "hash");
            }
            return Ok(routing_keys);
        }
        let total: u64 = redis::cmd("HLEN").arg(&key).query_async(&mut con).await?;
        ctx.progress.phase(
            if again { "unacked (again)" } else { "unacked" },
            Some(total),
        );
        let mut cursor: u64 = 0;
        loop {
            ctx.cancel.check()?;
            let (next, flat): (u64, Vec<Vec<u8>>) = redis::cmd("HSCAN")
                .arg(&key)
                .arg(cursor)
                .arg("COUNT")
                .arg(PAGE)
                .query_async(&mut con)
                .await?;
            let read_at = Instant::now();
            let mut raws = Vec::with_capacity(flat.len() / 2);
            let mut it = flat.into_iter();
            while let (Some(field), Some(raw)) = (it.next(), it.next()) {
                // HSCAN may return a field twice; a repeat is skipped in both passes.
                let new = seen.insert(hash64(&field));
                if new {
                    raws.push(RawEntry::Unacked {
                        key: key.clone(),
                        field,
                        raw,
                    });
                }
            }
            let n = raws.len() as u64;
            self.settle_page(raws, read_at, &mut |e: Entry| {
                if let Some(q) = &e.queue {
                    routing_keys.insert(q.clone());
                }
                sink(e)
            })
            .await?;
            ctx.progress.advance(n);
            if next == 0 {
                break;
            }
            cursor = next;
        }
        Ok(routing_keys)
    }

    /// Queue names: from config, else kombu's binding sets plus routing keys seen in `unacked`
    /// plus Celery's default `celery`.
    async fn queue_names(
        &self,
        routing_keys: BTreeSet<String>,
        ctx: &mut ScanCtx<'_>,
    ) -> Result<BTreeSet<Vec<u8>>> {
        if let Some(queues) = &self.settings.queues {
            return Ok(queues.iter().map(|q| q.as_bytes().to_vec()).collect());
        }
        let mut names: BTreeSet<Vec<u8>> =
            routing_keys.into_iter().map(String::into_bytes).collect();
        names.insert(b"celery".to_vec());
        let layout = &self.broker_layout;
        let tables = self.broker.scan_all(&layout.binding_scan_pattern()).await?;
        let types = self.broker.types(&tables).await?;
        let mut con = self.broker.con.clone();
        for (table, ty) in tables.iter().zip(types) {
            if ty != "set" {
                if ty != "none" {
                    ctx.wrong_types.add(table, &ty, "set");
                }
                continue;
            }
            let Some(exchange) = layout.binding_exchange(table) else {
                continue;
            };
            let members: Vec<Vec<u8>> = redis::cmd("SMEMBERS")
                .arg(table)
                .query_async(&mut con)
                .await?;
            for m in members {
                if let Some(b) = layout.parse_binding(&m) {
                    if !janitor_wire::BrokerLayout::is_control_binding(exchange, &b)
                        && !b.queue.is_empty()
                    {
                        names.insert(b.queue);
                    }
                }
            }
        }
        Ok(names)
    }

    /// Every list key to read, with its queue name: each queue's bare key and configured
    /// priority steps, plus any `<queue>\x06\x16<n>` sub-list found by one SCAN pass, so custom
    /// `priority_steps` (and queues whose binding table is gone) are not missed.
    async fn queue_lists(
        &self,
        routing_keys: BTreeSet<String>,
        ctx: &mut ScanCtx<'_>,
    ) -> Result<BTreeMap<Vec<u8>, String>> {
        let names = self.queue_names(routing_keys, ctx).await?;
        let configured = self.settings.queues.is_some();
        self.lists_of(&names, configured, ctx).await
    }

    /// The list keys of the queues `names` (bare keys, configured priority steps), plus the
    /// `<queue>\x06\x16<n>` sub-lists one SCAN finds — of those queues only when `only_named`,
    /// else of any queue. Keys of another type are noted and left out.
    async fn lists_of(
        &self,
        names: &BTreeSet<Vec<u8>>,
        only_named: bool,
        ctx: &mut ScanCtx<'_>,
    ) -> Result<BTreeMap<Vec<u8>, String>> {
        let layout = &self.broker_layout;
        let mut lists = BTreeMap::new();
        for q in names {
            for key in layout.queue_keys(q) {
                lists.insert(key, String::from_utf8_lossy(q).into_owned());
            }
        }
        for key in self.broker.scan_all(&layout.sublist_scan_pattern()).await? {
            if let Some((q, step)) = layout.split_queue_key(&key) {
                if step > 0 && (!only_named || names.contains(q)) {
                    let name = String::from_utf8_lossy(q).into_owned();
                    lists.insert(key, name);
                }
            }
        }
        let keys: Vec<Vec<u8>> = lists.keys().cloned().collect();
        for (key, ty) in keys.iter().zip(self.broker.types(&keys).await?) {
            if ty != "list" {
                if ty != "none" {
                    ctx.wrong_types.add(key, &ty, "list");
                }
                lists.remove(key);
            }
        }
        Ok(lists)
    }

    /// Reads every list of one queue (its bare list and all its priority sub-lists) and
    /// nothing else: what a queue purge plans from.
    pub(crate) async fn scan_queue(
        &self,
        queue: &str,
        ctx: &mut ScanCtx<'_>,
        sink: &mut (dyn FnMut(Entry) + Send),
    ) -> Result<()> {
        let names = BTreeSet::from([queue.as_bytes().to_vec()]);
        for (key, name) in &self.lists_of(&names, true, ctx).await? {
            self.scan_list(key, name, ctx, sink).await?;
        }
        Ok(())
    }

    /// How many elements the lists of one queue hold now — its bare list and every priority
    /// sub-list, LLEN of each: a cheap count that reads no message.
    pub async fn queue_length(&self, queue: &str) -> Result<u64> {
        let names = BTreeSet::from([queue.as_bytes().to_vec()]);
        let cancel = Cancel::default();
        let mut ctx = ScanCtx::new(&crate::progress::NoProgress, &cancel);
        let lists = self.lists_of(&names, true, &mut ctx).await?;
        if lists.is_empty() {
            return Ok(0);
        }
        let mut pipe = redis::pipe();
        for key in lists.keys() {
            pipe.cmd("LLEN").arg(key);
        }
        let mut con = self.broker.con.clone();
        let lens: Vec<u64> = pipe.query_async(&mut con).await?;
        Ok(lens.iter().sum())
    }

    async fn scan_list(
        &self,
        key: &[u8],
        name: &str,
        ctx: &mut ScanCtx<'_>,
        sink: &mut (dyn FnMut(Entry) + Send),
    ) -> Result<()> {
        let mut con = self.broker.con.clone();
        let len: i64 = redis::cmd("LLEN").arg(key).query_async(&mut con).await?;
        ctx.progress.phase(
            &format!("queue {}", crate::archive::printable(key)),
            Some(len as u64),
        );
        // Producers' LPUSHes between two page reads shift messages towards the tail, so the
        // next page can repeat a few; remember the recent ones to count each message once.
        let mut recent = RecentWindow::new(DEDUP_WINDOW);
        let mut start: i64 = 0;
        loop {
            ctx.cancel.check()?;
            let (list_len, items): (i64, Vec<Vec<u8>>) = redis::pipe()
                .atomic()
                .cmd("LLEN")
                .arg(key)
                .cmd("LRANGE")
                .arg(key)
                .arg(start)
                .arg(start + PAGE as i64 - 1)
                .query_async(&mut con)
                .await?;
            let read_at = Instant::now();
            let n = items.len();
            let raws = items
                .into_iter()
                .enumerate()
                .filter(|(_, raw)| recent.insert(raw))
                .map(|(i, raw)| RawEntry::Queue {
                    key: key.to_vec(),
                    queue: name.to_owned(),
                    index: start + i as i64,
                    list_len,
                    raw,
                })
                .collect();
            self.settle_page(raws, read_at, sink).await?;
            ctx.progress.advance(n as u64);
            if n < PAGE {
                break;
            }
            start += n as i64;
        }
        Ok(())
    }

    async fn scan_results(
        &self,
        ctx: &mut ScanCtx<'_>,
        sink: &mut (dyn FnMut(Entry) + Send),
    ) -> Result<()> {
        ctx.progress.phase("results", None);
        let pattern = self.backend_layout.task_meta_scan_pattern();
        let mut con = self.backend.con.clone();
        let mut cursor = 0;
        loop {
            ctx.cancel.check()?;
            let (next, keys) = self.backend.scan_page(cursor, &pattern, 1000).await?;
            for page in keys.chunks(PAGE) {
                let mut pipe = redis::pipe();
                for k in page {
                    pipe.cmd("TYPE").arg(k);
                    pipe.cmd("PTTL").arg(k);
                }
                let meta: Vec<redis::Value> = pipe.query_async(&mut con).await?;
                let mut strings: Vec<(&Vec<u8>, i64)> = Vec::with_capacity(page.len());
                for (k, tp) in page.iter().zip(meta.chunks(2)) {
                    let ty: String = redis::from_redis_value_ref(&tp[0]).unwrap_or_default();
                    let pttl: i64 = redis::from_redis_value_ref(&tp[1]).unwrap_or(-2);
                    match ty.as_str() {
                        "string" => strings.push((k, pttl)),
                        // Expired between SCAN and TYPE.
                        "none" | "" => {}
                        other => {
                            if matches!(
                                self.backend_layout.classify(k),
                                janitor_wire::BackendKey::TaskMeta { .. }
                            ) {
                                ctx.wrong_types.add(k, other, "string");
                            }
                        }
                    }
                }
                if strings.is_empty() {
                    continue;
                }
                let values: Vec<Option<Vec<u8>>> = redis::cmd("MGET")
                    .arg(
                        strings
                            .iter()
                            .map(|(k, _)| k.as_slice())
                            .collect::<Vec<_>>(),
                    )
                    .query_async(&mut con)
                    .await?;
                let read_at = Instant::now();
                let mut raws = Vec::with_capacity(values.len());
                for ((key, pttl), value) in strings.into_iter().zip(values) {
                    let Some(raw) = value else { continue };
                    let janitor_wire::BackendKey::TaskMeta { task_id } =
                        self.backend_layout.classify(key)
                    else {
                        continue;
                    };
                    raws.push(RawEntry::Result {
                        key: key.clone(),
                        task_id: String::from_utf8_lossy(task_id).into_owned(),
                        raw,
                        pttl,
                    });
                }
                let n = raws.len() as u64;
                self.settle_page(raws, read_at, sink).await?;
                ctx.progress.advance(n);
            }
            if next == 0 {
                break;
            }
            cursor = next;
        }
        Ok(())
    }

    /// Grace: waits until `grace` seconds have passed since the last candidate was read (rows
    /// of apps that enqueue before committing appear meanwhile), then asks the database again.
    /// Entries whose row now exists become live. Waits only if there is something to confirm.
    pub(crate) async fn confirm(
        &self,
        candidates: &mut [Entry],
        grace: f64,
        lock: Option<&RunLock>,
        cancel: &Cancel,
        progress: &dyn Progress,
    ) -> Result<()> {
        if candidates.is_empty() {
            return Ok(());
        }
        // Every candidate carries its read time; the latest bounds them all, so each one's
        // owner is asked again at least `grace` after that entry was read.
        let last_read = candidates
            .iter()
            .filter_map(|e| e.read_at)
            .max()
            .unwrap_or_else(Instant::now);
        let deadline = last_read + Duration::from_secs_f64(grace);
        if Instant::now() < deadline {
            progress.phase(
                &format!("confirming {} orphans (grace {grace} s)", candidates.len()),
                None,
            );
        }
        loop {
            let now = Instant::now();
            if now >= deadline {
                break;
            }
            let step = (deadline - now).min(Duration::from_secs(1));
            tokio::select! {
                _ = tokio::time::sleep(step) => {}
                _ = cancel.cancelled() => return Err(EngineError::Interrupted),
            }
            if let Some(lock) = lock {
                lock.ensure_held()?;
            }
        }
        cancel.check()?;
        for chunk in candidates.chunks_mut(1000) {
            self.settle(chunk).await?;
        }
        Ok(())
    }
}
