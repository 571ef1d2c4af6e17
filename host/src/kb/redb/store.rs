//! The [`Store`] contract on redb: each effect is a writer job running the
//! rules of [`ops`] in a batch's transaction; each read is a snapshot read.

use super::*;

impl Store for RedbStore {
    fn get(&self, entity: &EntityRef) -> Result<Option<Entity>, StoreError> {
        self.entities()?.get(entity.key())
    }

    fn sync_then(&self, done: Done<()>) {
        if self.all_durable() {
            return done(Ok(()));
        }
        // A durable job that does nothing: its batch takes in the tail, and
        // it is answered once that batch, and so every one before it, is on
        // disk.
        self.submit(true, |_| Ok(()), done);
    }

    fn health(&self) -> Result<(), String> {
        let Some(w) = &self.writer else { return Ok(()) };
        if w.thread.as_ref().is_some_and(std::thread::JoinHandle::is_finished) {
            return Err("the store's writer has stopped".into());
        }
        match w.shared.journal.get().and_then(|h| h.failure()) {
            Some(why) => Err(format!("writes are stopped since the journal failed ({why}); restart the host")),
            None => Ok(()),
        }
    }

    fn stats(&self) -> crate::metrics::StoreStats {
        let Some(w) = &self.writer else { return Default::default() };
        crate::metrics::StoreStats {
            batch_size: Some(w.shared.batch_sizes.0.snapshot()),
            sync_latency: w.shared.journal.get().map(|h| h.sync_latency.snapshot()),
            queued: w.shared.queued.load(std::sync::atomic::Ordering::Relaxed) as u64,
        }
    }

    fn durable_changes(&self) -> tokio::sync::watch::Receiver<u64> {
        match &self.writer {
            Some(w) => w.shared.durable.subscribe(),
            // Nothing more becomes durable through a read-only store.
            None => tokio::sync::watch::Sender::new(0).subscribe(),
        }
    }

    fn get_at(&self, entity: &EntityRef, at: AtPoint) -> Result<Option<Entity>, StoreError> {
        let txn = self.read()?;
        let events = txn.open_table(EVENTS).map_err(backend)?;
        let history = txn.open_table(HISTORY).map_err(backend)?;
        let key = entity.key();
        let seqs = history.range((key.as_str(), 0)..=(key.as_str(), u64::MAX)).map_err(backend)?;
        ops::reads::state_at(seqs.map(|item| load_event(&events, item.map_err(backend)?.0.value().1)), at)
    }

    fn history(&self, entity: &EntityRef, after_seq: u64, limit: usize) -> Result<Vec<Event>, StoreError> {
        let txn = self.read()?;
        let events = txn.open_table(EVENTS).map_err(backend)?;
        let history = txn.open_table(HISTORY).map_err(backend)?;
        let key = entity.key();
        let start = after_seq.saturating_add(1);
        let mut out = Vec::new();
        for item in history.range((key.as_str(), start)..=(key.as_str(), u64::MAX)).map_err(backend)?.take(limit) {
            let (k, _) = item.map_err(backend)?;
            out.push(load_event(&events, k.value().1)?);
        }
        Ok(out)
    }

    fn list(&self, kind: Option<&str>, after: Option<&str>, limit: usize) -> Result<Vec<Entity>, StoreError> {
        let txn = self.read()?;
        let entities = txn.open_table(ENTITIES).map_err(backend)?;
        // Keys are `kind/id`, and `0` sorts right after `/`: a kind's
        // entities are the keys from `kind/` up to `kind0`.
        let (low, high) = match kind {
            Some(k) => (format!("{k}/"), Some(format!("{k}0"))),
            None => (String::new(), None),
        };
        let start = match after {
            Some(a) if a >= low.as_str() => std::ops::Bound::Excluded(a.to_string()),
            _ => std::ops::Bound::Included(low),
        };
        let end = match high {
            Some(h) => std::ops::Bound::Excluded(h),
            None => std::ops::Bound::Unbounded,
        };
        let bounds: (std::ops::Bound<&str>, std::ops::Bound<&str>) =
            (start.as_ref().map(String::as_str), end.as_ref().map(String::as_str));
        let mut out = Vec::new();
        for item in entities.range::<&str>(bounds).map_err(backend)?.take(limit) {
            let (k, v) = item.map_err(backend)?;
            out.push(decode(v.value(), || format!("entity {}", k.value()))?);
        }
        Ok(out)
    }

    fn history_back(&self, entity: &EntityRef, before_seq: u64, limit: usize) -> Result<Vec<Event>, StoreError> {
        let txn = self.read()?;
        let events = txn.open_table(EVENTS).map_err(backend)?;
        let history = txn.open_table(HISTORY).map_err(backend)?;
        let key = entity.key();
        let mut out = Vec::new();
        for item in history.range((key.as_str(), 0)..(key.as_str(), before_seq)).map_err(backend)?.rev().take(limit) {
            let (k, _) = item.map_err(backend)?;
            out.push(load_event(&events, k.value().1)?);
        }
        Ok(out)
    }

    fn recent(&self, entity: &EntityRef, since_ms: u64) -> Result<Vec<Event>, StoreError> {
        let txn = self.read()?;
        let snapshot = ReadHistory {
            events: txn.open_table(EVENTS).map_err(backend)?,
            history: txn.open_table(HISTORY).map_err(backend)?,
        };
        ops::reads::recent(&snapshot, entity, since_ms)
    }

    fn event(&self, seq: u64) -> Result<Option<Event>, StoreError> {
        let txn = self.read()?;
        let events = txn.open_table(EVENTS).map_err(backend)?;
        match events.get(seq).map_err(backend)? {
            Some(v) => decode(v.value(), || format!("event {seq}")).map(Some),
            None => Ok(None),
        }
    }

    fn events(&self, after_seq: u64, limit: usize) -> Result<Vec<Event>, StoreError> {
        let txn = self.read()?;
        let events = txn.open_table(EVENTS).map_err(backend)?;
        let mut out = Vec::new();
        for item in events.range(after_seq.saturating_add(1)..).map_err(backend)?.take(limit) {
            let (k, v) = item.map_err(backend)?;
            let seq = k.value();
            out.push(decode(v.value(), || format!("event {seq}"))?);
        }
        Ok(out)
    }

    fn commit(
        &self,
        request: CommitRequest,
        guard: Guard,
        audit: Auditor<CommitOutcome>,
    ) -> Result<(CommitOutcome, AuditEntry), StoreError> {
        self.run(true, move |tx| ops::commit::commit(tx, request, guard, audit))
    }

    fn commit_then(
        &self,
        request: CommitRequest,
        guard: Guard,
        audit: Auditor<CommitOutcome>,
        done: crate::kb::store::Done<(CommitOutcome, AuditEntry)>,
    ) {
        self.submit(true, move |tx| ops::commit::commit(tx, request, guard, audit), done)
    }

    fn act(
        &self,
        request: ActRequest,
        guard: Guard,
        audit: Auditor<ActOutcome>,
    ) -> Result<(ActOutcome, AuditEntry), StoreError> {
        self.run(true, move |tx| ops::act::act(tx, request, guard, audit))
    }

    fn pending_actions(&self, limit: usize) -> Result<Vec<ActionRecord>, StoreError> {
        let txn = self.read()?;
        let outbox = txn.open_table(OUTBOX).map_err(backend)?;
        let actions = txn.open_table(ACTIONS).map_err(backend)?;
        let mut out = Vec::new();
        for item in outbox.iter().map_err(backend)?.take(limit) {
            let id = item.map_err(backend)?.0.value();
            let bytes = actions.get(id).map_err(backend)?.ok_or_else(|| StoreError::Corrupt {
                what: format!("action {id}"),
                reason: "in the outbox but missing".into(),
            })?;
            out.push(decode(bytes.value(), || format!("action {id}"))?);
        }
        drop((outbox, actions, txn));
        // A batch is visible to reads a moment before the journal has it
        // on disk; a side effect must never outrun its record. A durable
        // no-op is answered only once every batch before it is on disk.
        if !out.is_empty() && self.writer.is_some() {
            self.run(true, |_| Ok(()))?;
        }
        Ok(out)
    }

    fn actions(&self) -> Result<Vec<ActionRecord>, StoreError> {
        let txn = self.read()?;
        let actions = txn.open_table(ACTIONS).map_err(backend)?;
        let mut out = Vec::new();
        for item in actions.iter().map_err(backend)? {
            let (k, v) = item.map_err(backend)?;
            let id = k.value();
            out.push(decode(v.value(), || format!("action {id}"))?);
        }
        Ok(out)
    }

    fn delivery_failed(
        &self,
        id: u64,
        failure: crate::kb::DeliveryFailure,
        audit: Auditor<ActionRecord>,
    ) -> Result<(ActionRecord, AuditEntry), StoreError> {
        self.run(true, move |tx| ops::act::delivery_failed(tx, id, failure, audit))
    }

    fn retry_action(
        &self,
        id: u64,
        at_ms: u64,
        audit: Auditor<ActionRecord>,
    ) -> Result<(ActionRecord, AuditEntry), StoreError> {
        self.run(true, move |tx| ops::act::retry(tx, id, at_ms, audit))
    }

    fn mark_delivered(&self, id: u64, at_ms: u64) -> Result<(), StoreError> {
        self.run(true, move |tx| ops::act::mark_delivered(tx, id, at_ms))
    }

    fn lease(
        &self,
        actor: Actor,
        entity: EntityRef,
        ttl_ms: u64,
        now_ms: u64,
        audit: Auditor<LeaseOutcome>,
    ) -> Result<(LeaseOutcome, AuditEntry), StoreError> {
        self.run(true, move |tx| ops::leases::lease(tx, actor, entity, ttl_ms, now_ms, audit))
    }

    fn release(
        &self,
        actor: Actor,
        entity: EntityRef,
        token: u64,
        audit: Auditor<bool>,
    ) -> Result<(bool, AuditEntry), StoreError> {
        let now = crate::kb::model::now_ms();
        self.run(true, move |tx| ops::leases::release(tx, actor, entity, token, now, audit))
    }

    fn renew(
        &self,
        actor: Actor,
        entity: EntityRef,
        token: u64,
        ttl_ms: u64,
        now_ms: u64,
        audit: Auditor<LeaseOutcome>,
    ) -> Result<(LeaseOutcome, AuditEntry), StoreError> {
        self.run(true, move |tx| ops::leases::renew(tx, actor, entity, token, ttl_ms, now_ms, audit))
    }

    fn break_lease(
        &self,
        entity: EntityRef,
        at_ms: u64,
        audit: Auditor<Lease>,
    ) -> Result<(Lease, AuditEntry), StoreError> {
        self.run(true, move |tx| ops::leases::break_lease(tx, entity, at_ms, audit))
    }

    fn live_lease(&self, entity: &EntityRef, now_ms: u64) -> Result<Option<Lease>, StoreError> {
        let txn = self.read()?;
        Ok(load_lease(&txn.open_table(LEASES).map_err(backend)?, &entity.key())?.filter(|l| l.is_live(now_ms)))
    }

    fn request_change(
        &self,
        request: ChangeRequest,
        actor: Actor,
        at_ms: u64,
        audit: Auditor<Event>,
    ) -> Result<(ChangeRequest, AuditEntry), StoreError> {
        self.run(true, move |tx| ops::requests::request_change(tx, request, actor, at_ms, audit))
    }

    fn change_requests(&self, after: u64, limit: usize) -> Result<Vec<ChangeRequest>, StoreError> {
        let txn = self.read()?;
        let requests = txn.open_table(REQUESTS).map_err(backend)?;
        let mut out = Vec::new();
        for item in requests.range(after.saturating_add(1)..).map_err(backend)?.take(limit) {
            let (id, v) = item.map_err(backend)?;
            out.push(decode(v.value(), || format!("change request {}", id.value()))?);
        }
        Ok(out)
    }

    fn expire_change_request(
        &self,
        id: u64,
        reason: String,
        at_ms: u64,
        audit: Auditor<Event>,
    ) -> Result<(Event, AuditEntry), StoreError> {
        self.run(true, move |tx| ops::requests::expire_change_request(tx, id, reason, at_ms, audit))
    }

    fn resolve_change(
        &self,
        id: u64,
        actor: Actor,
        applied: bool,
        reason: String,
        at_ms: u64,
        audit: Auditor<Result<ChangeRequest, String>>,
    ) -> Result<(Result<ChangeRequest, String>, AuditEntry), StoreError> {
        self.run(true, move |tx| ops::requests::resolve_change(tx, id, actor, applied, reason, at_ms, audit))
    }

    fn pin(
        &self,
        entity: EntityRef,
        fields: Vec<(String, Value)>,
        by: String,
        reason: String,
        at_ms: u64,
        audit: Auditor<Event>,
    ) -> Result<(Event, AuditEntry), StoreError> {
        self.run(true, move |tx| ops::pins::pin(tx, entity, fields, by, reason, at_ms, audit))
    }

    fn unpin(
        &self,
        entity: EntityRef,
        fields: Vec<String>,
        by: String,
        reason: String,
        at_ms: u64,
        audit: Auditor<Event>,
    ) -> Result<(Event, AuditEntry), StoreError> {
        self.run(true, move |tx| ops::pins::unpin(tx, entity, fields, by, reason, at_ms, audit))
    }

    fn pins(&self, entity: &EntityRef) -> Result<Vec<Pin>, StoreError> {
        let txn = self.read()?;
        load_pins(&txn.open_table(PINS).map_err(backend)?, &entity.key())
    }

    fn changes_since_read(
        &self,
        agent: String,
        entity: EntityRef,
        audit: Auditor<Vec<Event>>,
    ) -> Result<(Vec<Event>, AuditEntry), StoreError> {
        let now = crate::kb::model::now_ms();
        self.run(true, move |tx| ops::reads::changes_since_read(tx, agent, entity, now, audit))
    }

    fn record_read(&self, agent: String, key: String, seq: u64, draft: AuditDraft) -> Result<u64, StoreError> {
        // A read has no effect to protect: its entry (and the cursor move)
        // waits in the tail for the next batch, durable within
        // READ_AUDIT_FLUSH.
        self.push_read(draft, Some((agent, key, seq)))
    }

    fn replay(&self) -> Result<ReplayReport, StoreError> {
        let txn = self.read()?;
        let events = txn.open_table(EVENTS).map_err(backend)?;
        let entities = txn.open_table(ENTITIES).map_err(backend)?;
        let events = events.iter().map_err(backend)?.map(|item| {
            let (k, v) = item.map_err(backend)?;
            decode(v.value(), || format!("event {}", k.value()))
        });
        let stored = entities.iter().map_err(backend)?.map(|item| {
            let (k, v) = item.map_err(backend)?;
            let key = k.value().to_string();
            let entity = decode(v.value(), || format!("entity {key}"))?;
            Ok((key, entity))
        });
        ops::reads::replay(events, stored)
    }

    fn append_audit(&self, draft: AuditDraft) -> Result<AuditEntry, StoreError> {
        self.run(true, move |txn| append_audit_in(txn, draft, crate::kb::model::now_ms()))
    }

    fn append_read_audit(&self, draft: AuditDraft) -> Result<u64, StoreError> {
        self.push_read(draft, None)
    }

    fn audit_entry(&self, seq: u64) -> Result<Option<AuditEntry>, StoreError> {
        self.settle()?;
        let txn = self.read()?;
        let audit = txn.open_table(AUDIT).map_err(backend)?;
        match audit.get(seq).map_err(backend)? {
            Some(v) => decode(v.value(), || format!("audit entry {seq}")).map(Some),
            None => Ok(None),
        }
    }

    fn audit(&self, filter: &AuditFilter) -> Result<Vec<AuditEntry>, StoreError> {
        self.settle()?;
        let txn = self.read()?;
        let audit = txn.open_table(AUDIT).map_err(backend)?;
        let limit = filter.limit.unwrap_or(usize::MAX);
        let seqs = filter.seqs();
        let forward = filter.forward();
        let mut out = Vec::new();
        if seqs.is_empty() || limit == 0 {
            return Ok(out);
        }
        // Every match is pushed in the reading direction; backward reads
        // are put back in order at the end.
        let done = |mut out: Vec<AuditEntry>| {
            if !forward {
                out.reverse();
            }
            Ok(out)
        };
        let scan = |range: std::ops::Range<u64>, out: &mut Vec<AuditEntry>| -> Result<(), StoreError> {
            if range.is_empty() {
                return Ok(());
            }
            let items = audit.range(range).map_err(backend)?;
            let mut step = |item: Result<(redb::AccessGuard<'_, u64>, redb::AccessGuard<'_, &[u8]>), _>| {
                let (k, v) = item.map_err(backend)?;
                let seq = k.value();
                let entry: AuditEntry = decode(v.value(), || format!("audit entry {seq}"))?;
                if filter.matches(&entry) {
                    out.push(entry);
                }
                Ok::<bool, StoreError>(out.len() < limit)
            };
            if forward {
                for item in items {
                    if !step(item)? {
                        break;
                    }
                }
            } else {
                for item in items.rev() {
                    if !step(item)? {
                        break;
                    }
                }
            }
            Ok(())
        };
        let take = |seq: u64, out: &mut Vec<AuditEntry>| -> Result<bool, StoreError> {
            let Some(bytes) = audit.get(seq).map_err(backend)? else {
                return Err(StoreError::Corrupt {
                    what: format!("audit entry {seq}"),
                    reason: "indexed but missing".into(),
                });
            };
            let entry: AuditEntry = decode(bytes.value(), || format!("audit entry {seq}"))?;
            if filter.matches(&entry) {
                out.push(entry);
            }
            Ok(out.len() < limit)
        };
        let plan = ops::audit_plan::plan(filter);
        if plan == AuditPlan::Log {
            scan(seqs, &mut out)?;
            return done(out);
        }
        // The newest entries, past the indexes' reach, come from the log
        // itself (at most a flush's worth; see IndexRow); the others from
        // the indexes, so no entry is counted twice. Backward reads take
        // the newest first, forward reads the indexed ones first.
        let indexed = audit_indexed(&txn)?;
        let past = seqs.start.max(indexed.saturating_add(1))..seqs.end;
        let in_index = seqs.start..seqs.end.min(indexed.saturating_add(1));
        if !forward {
            scan(past.clone(), &mut out)?;
            if out.len() >= limit {
                return done(out);
            }
        }
        let single = |table: TableDefinition<(&str, u64), &[u8]>, key: &str, out: &mut Vec<AuditEntry>| {
            let index = txn.open_table(table).map_err(backend)?;
            let open = |lo: u64, hi: u64| index.range((key, lo)..=(key, hi)).map_err(backend);
            walk_runs(open, in_index.clone(), forward, table.name(), |seq| take(seq, out))
        };
        match plan {
            AuditPlan::Log => {}
            AuditPlan::Invocations(invocations) => {
                let index = txn.open_table(AUDIT_BY_INVOCATION).map_err(backend)?;
                let mut found = Vec::new();
                for inv in invocations {
                    let open = |lo: u64, hi: u64| index.range((inv, lo)..=(inv, hi)).map_err(backend);
                    walk_runs(open, in_index.clone(), true, AUDIT_BY_INVOCATION.name(), |seq| {
                        found.push(seq);
                        Ok(true)
                    })?;
                }
                found.sort_unstable();
                if !forward {
                    found.reverse();
                }
                for seq in found {
                    if !take(seq, &mut out)? {
                        return done(out);
                    }
                }
            }
            AuditPlan::AgentEntity { agent, entity } => {
                let index = txn.open_table(AUDIT_BY_AGENT_ENTITY).map_err(backend)?;
                let open = |lo: u64, hi: u64| index.range((agent, entity, lo)..=(agent, entity, hi)).map_err(backend);
                walk_runs(open, in_index.clone(), forward, AUDIT_BY_AGENT_ENTITY.name(), |seq| take(seq, &mut out))?;
            }
            AuditPlan::Agent(agent) => single(AUDIT_BY_AGENT, agent, &mut out)?,
            AuditPlan::Entity(entity) => single(AUDIT_BY_ENTITY, entity, &mut out)?,
        }
        if forward && out.len() < limit {
            scan(past, &mut out)?;
        }
        done(out)
    }

    fn request_key(&self, key: &str) -> Result<Option<(u64, Vec<u8>)>, StoreError> {
        let txn = self.read()?;
        let keys = txn.open_table(REQUEST_KEYS).map_err(backend)?;
        let Some(v) = keys.get(key).map_err(backend)? else { return Ok(None) };
        let bytes = v.value();
        let (at, record) = bytes.split_at_checked(8).ok_or_else(|| StoreError::Corrupt {
            what: format!("request key {key}"),
            reason: format!("{} bytes, less than its 8-byte time", bytes.len()),
        })?;
        let at = u64::from_le_bytes(at.try_into().map_err(backend)?);
        Ok(Some((at, record.to_vec())))
    }

    fn put_request_key(
        &self,
        key: String,
        at_ms: u64,
        record: Vec<u8>,
        expire_before_ms: u64,
    ) -> Result<(), StoreError> {
        self.run(true, move |tx| {
            let mut keys = tx.request_keys().map_err(backend)?;
            let mut by_time = tx.request_keys_by_time().map_err(backend)?;
            let expired: Vec<(u64, String)> = by_time
                .range((0, "")..(expire_before_ms, ""))
                .map_err(backend)?
                .take(crate::kb::store::EXPIRED_PER_PUT)
                .map(|item| item.map(|(k, _)| (k.value().0, k.value().1.to_string())).map_err(backend))
                .collect::<Result<_, _>>()?;
            for (at, old) in &expired {
                by_time.remove((*at, old.as_str())).map_err(backend)?;
                // Only if it was not stored again since.
                let stored_at = keys
                    .get(old.as_str())
                    .map_err(backend)?
                    .and_then(|v| v.value().get(..8).and_then(|b| b.try_into().ok()).map(u64::from_le_bytes));
                if stored_at == Some(*at) {
                    keys.remove(old.as_str()).map_err(backend)?;
                }
            }
            let previous = keys
                .get(key.as_str())
                .map_err(backend)?
                .and_then(|v| v.value().get(..8).and_then(|b| b.try_into().ok()).map(u64::from_le_bytes));
            if let Some(previous) = previous {
                by_time.remove((previous, key.as_str())).map_err(backend)?;
            }
            let mut value = Vec::with_capacity(8 + record.len());
            value.extend_from_slice(&at_ms.to_le_bytes());
            value.extend_from_slice(&record);
            keys.insert(key.as_str(), value.as_slice()).map_err(backend)?;
            by_time.insert((at_ms, key.as_str()), ()).map_err(backend)?;
            Ok(())
        })
    }

    fn host_state(&self, name: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let txn = self.read()?;
        let state = txn.open_table(HOST_STATE).map_err(backend)?;
        Ok(state.get(name).map_err(backend)?.map(|v| v.value().to_vec()))
    }

    fn put_host_state(&self, name: String, value: Vec<u8>) -> Result<(), StoreError> {
        self.run(true, move |tx| ops::Txn::put_host_state(tx, &name, &value))
    }

    fn extras(&self) -> Result<crate::kb::store::Extras, StoreError> {
        self.settle()?;
        let txn = self.read()?;
        let meta = txn.open_table(META).map_err(backend)?;
        let next_fence = meta.get(NEXT_FENCE).map_err(backend)?.map_or(1, |v| v.value());
        let mut leases = Vec::new();
        for item in txn.open_table(LEASES).map_err(backend)?.iter().map_err(backend)? {
            let (k, v) = item.map_err(backend)?;
            leases.push(decode(v.value(), || format!("lease on {}", k.value()))?);
        }
        let mut cursors = Vec::new();
        for item in txn.open_table(CURSORS).map_err(backend)?.iter().map_err(backend)? {
            let (k, v) = item.map_err(backend)?;
            let (agent, key) = k.value();
            cursors.push((agent.to_string(), key.to_string(), v.value()));
        }
        let mut host_state = Vec::new();
        for item in txn.open_table(HOST_STATE).map_err(backend)?.iter().map_err(backend)? {
            let (k, v) = item.map_err(backend)?;
            host_state.push((k.value().to_string(), v.value().to_vec()));
        }
        Ok(crate::kb::store::Extras { next_fence, leases, cursors, host_state })
    }

    fn import(&self, part: crate::kb::store::Import) -> Result<(), StoreError> {
        self.run(true, move |tx| ops::migrate::import(tx, part))
    }

    fn verify_audit(&self) -> Result<Verification, StoreError> {
        self.settle()?;
        let txn = self.read()?;
        let audit = txn.open_table(AUDIT).map_err(backend)?;
        let rows = audit.iter().map_err(backend)?.map(|item| {
            let (k, v) = item.map_err(backend)?;
            Ok((k.value(), v.value().to_vec()))
        });
        ops::reads::verify_stored(rows)
    }
}
