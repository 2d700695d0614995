//! The op log in PostgreSQL (`postgres_url`), instead of sled: the same [`Store`]
//! contract, for teams that keep their data in a database they already run and back up.
//!
//! # Tables (created and migrated at startup, or by `collabd migrate`)
//!
//! ```sql
//! collabd_updates   (room text, seq bigint, written_at timestamptz, bytes bytea,
//!                    primary key (room, seq))          -- one row per accepted update
//! collabd_snapshots (room text primary key, seq bigint, written_at timestamptz,
//!                    state bytea)                      -- the latest snapshot per room
//! collabd_migrations (version int primary key, applied_at timestamptz)
//! ```
//!
//! A room's updates by seq: `select seq, written_at, length(bytes) from collabd_updates
//! where room = 'docs/welcome' order by seq;`
//!
//! # Durability and group commit
//!
//! An append (or a snapshot) is only remembered in memory, where reads see it at once; it
//! costs the room's thread no I/O. [`Store::flush`] (the flusher, once per
//! `flush_interval_ms` at most) writes everything remembered in **one transaction**,
//! updates of every room in one `INSERT … SELECT FROM unnest(…)`, and returns once the
//! `COMMIT` has returned: only then does a room show those seqs. Many updates of many
//! rooms thus share one commit. What a commit is worth depends on the server:
//! [`PostgresStore::open`] reads `synchronous_commit` and `fsync` and says plainly, at
//! startup, when a commit is not on disk.
//!
//! Inserts are idempotent (`on conflict do nothing` for an update already stored,
//! a snapshot replaced only by a newer one), so a commit whose answer was lost can be
//! retried without harm.
//!
//! # The database going away
//!
//! A commit that fails because the connection is gone (or the server refuses
//! connections for now) is *not* final: what it would have written stays in memory, the
//! store reports itself unavailable ([`Store::unavailable`]: rooms refuse new writes with
//! 503 `store_unavailable`, WebSocket updates are not acked and their senders are re-synced
//! once it is back, reads and live peers go on from memory), and the flusher retries with
//! backoff and jitter, reconnecting each time. When a commit goes through, the seqs it
//! covers are shown and writes are taken again: nothing acknowledged is lost, no seq is
//! reused. An error the database itself reports about the data is final, as a failed
//! fsync is with sled.
//!
//! Deletions of compacted records run at once, in their own statement: losing one to a
//! crash only leaves records a later compaction deletes.

use std::collections::BTreeMap;
use std::sync::{Mutex, MutexGuard, OnceLock};

use log::{info, warn};
use postgres::{Client, NoTls};

use super::{Epoch, LoggedUpdate, RoomSummary, Snapshot, Store, StoreError, check_room_name};

/// The schema, one migration per entry, applied in order, each once.
const MIGRATIONS: &[(i32, &str)] = &[
    (
        1,
        "create table collabd_updates (
         room text not null,
         seq bigint not null,
         written_at timestamptz not null default now(),
         bytes bytea not null,
         primary key (room, seq)
     );
     create table collabd_snapshots (
         room text primary key,
         seq bigint not null,
         written_at timestamptz not null default now(),
         state bytea not null
     );",
    ),
    (
        2,
        "create table collabd_epochs (
             room text primary key,
             number bigint not null,
             base bigint not null,
             graveyard bytea not null
         );
         create table collabd_revocations (
             key text primary key,
             value bigint not null
         );",
    ),
    (
        3,
        "create table collabd_authors (
             room text not null,
             seq bigint not null,
             author text not null,
             primary key (room, seq)
         );
         create table collabd_versions (
             room text not null,
             name text not null,
             seq bigint not null,
             pinned_at timestamptz not null default now(),
             state bytea not null,
             primary key (room, name)
         );
         create table collabd_checkpoints (
             room text not null,
             seq bigint not null,
             written_at timestamptz not null default now(),
             state bytea not null,
             primary key (room, seq)
         );
         create table collabd_webhooks (
             room text primary key,
             delivered bigint not null default 0,
             target bigint not null default 0,
             marked bigint not null default 0
         );",
    ),
];

/// What waits for the next commit, visible to reads meanwhile.
#[derive(Clone, Default)]
struct Pending {
    /// (room, seq) → update.
    updates: BTreeMap<(String, u64), Vec<u8>>,
    /// room → its newest snapshot.
    snapshots: BTreeMap<String, Snapshot>,
    /// (room, seq) → who wrote it.
    authors: BTreeMap<(String, u64), String>,
    /// room → the seq its changes await webhook delivery up to.
    marks: BTreeMap<String, u64>,
    /// (room, seq) → a checkpoint's state, and the time (ms) before which older ones go.
    checkpoints: BTreeMap<(String, u64), (Vec<u8>, u64)>,
}

impl Pending {
    fn is_empty(&self) -> bool {
        self.updates.is_empty()
            && self.snapshots.is_empty()
            && self.authors.is_empty()
            && self.marks.is_empty()
            && self.checkpoints.is_empty()
    }

    /// Takes in everything of `newer` (which came after).
    fn absorb(&mut self, newer: &mut Pending) {
        self.updates.append(&mut newer.updates);
        self.snapshots.append(&mut newer.snapshots);
        self.authors.append(&mut newer.authors);
        for (room, seq) in std::mem::take(&mut newer.marks) {
            let mark = self.marks.entry(room).or_default();
            *mark = (*mark).max(seq);
        }
        self.checkpoints.append(&mut newer.checkpoints);
    }

    /// Forgets what `committed` holds (and nothing that replaced it since).
    fn forget(&mut self, committed: &Pending) {
        for key in committed.updates.keys() {
            self.updates.remove(key);
        }
        for (room, snapshot) in &committed.snapshots {
            if self
                .snapshots
                .get(room)
                .is_some_and(|s| s.seq == snapshot.seq)
            {
                self.snapshots.remove(room);
            }
        }
        for key in committed.authors.keys() {
            self.authors.remove(key);
        }
        for (room, seq) in &committed.marks {
            if self.marks.get(room) == Some(seq) {
                self.marks.remove(room);
            }
        }
        for key in committed.checkpoints.keys() {
            self.checkpoints.remove(key);
        }
    }

    /// Drops everything of `room`.
    fn drop_room(&mut self, room: &str) {
        self.updates.retain(|(r, _), _| r != room);
        self.snapshots.remove(room);
        self.authors.retain(|(r, _), _| r != room);
        self.marks.remove(room);
        self.checkpoints.retain(|(r, _), _| r != room);
    }
}

/// The op log in PostgreSQL. Two connections: one commits (the flusher's), one reads.
///
/// The blocking client runs a small runtime of its own for each call, which must not
/// happen on a thread that drives async tasks: every call happens on the flusher's
/// thread or the blocking pool (rooms only touch memory), and what must happen on an
/// async thread (opening, the last flush, dropping) runs on a thread of its own.
pub struct PostgresStore {
    writer: Mutex<Conn>,
    reader: Mutex<Conn>,
    pending: Mutex<Pending>,
    /// What the flush in progress is committing (still visible to reads).
    committing: Mutex<Pending>,
    flushing: Mutex<()>,
    failed: OnceLock<String>,
    /// Set while the last commit could not reach the database.
    down: Mutex<Option<String>>,
    url: String,
}

impl From<postgres::Error> for StoreError {
    fn from(e: postgres::Error) -> StoreError {
        let detail = match e.as_db_error() {
            Some(db) => format!("{} ({})", db.message(), db.code().code()),
            None => e.to_string(),
        };
        StoreError::Io(std::io::Error::other(format!("postgres: {detail}")))
    }
}

/// A connection that is closed on a thread of its own (closing blocks).
struct Conn(Option<Client>);

impl std::ops::Deref for Conn {
    type Target = Client;
    fn deref(&self) -> &Client {
        self.0.as_ref().expect("open until dropped")
    }
}

impl std::ops::DerefMut for Conn {
    fn deref_mut(&mut self) -> &mut Client {
        self.0.as_mut().expect("open until dropped")
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        if let Some(client) = self.0.take() {
            let _ = std::thread::spawn(move || drop(client)).join();
        }
    }
}

/// Runs `f` on a thread of its own and waits for it: the blocking client may not run on
/// a thread that drives async tasks.
pub fn off_runtime<T: Send>(f: impl FnOnce() -> T + Send) -> T {
    std::thread::scope(|s| s.spawn(f).join().expect("a postgres call panicked"))
}

/// Whether `e` says the database cannot be reached (now), rather than that it refused
/// what was sent: no answer from the server, or a connection-class SQLSTATE (08…), or
/// the server shutting down or starting (57P01–57P03).
fn is_transient(e: &postgres::Error) -> bool {
    match e.as_db_error() {
        None => true,
        Some(db) => {
            let code = db.code().code();
            code.starts_with("08") || matches!(code, "57P01" | "57P02" | "57P03")
        }
    }
}

/// `e` as [`StoreError::Unavailable`] when it is transient, else as it is.
fn transient(e: postgres::Error) -> StoreError {
    if is_transient(&e) {
        StoreError::Unavailable(format!("postgres: {e}"))
    } else {
        e.into()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn seq_of(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

fn sql_seq(seq: u64) -> i64 {
    i64::try_from(seq).unwrap_or(i64::MAX)
}

/// Applies the migrations `client`'s database lacks, one transaction each, under an
/// advisory lock (two nodes starting together migrate once). Returns how many ran.
pub fn migrate(client: &mut Client) -> Result<usize, StoreError> {
    client.batch_execute(
        "create table if not exists collabd_migrations (
             version int primary key,
             applied_at timestamptz not null default now()
         )",
    )?;
    let mut applied = 0;
    for (version, sql) in MIGRATIONS {
        let mut tx = client.transaction()?;
        // Any constant shared by every collabd: the lock lasts until the commit.
        tx.execute("select pg_advisory_xact_lock(7061636916)", &[])?;
        let done = tx
            .query_opt(
                "select 1 from collabd_migrations where version = $1",
                &[version],
            )?
            .is_some();
        if !done {
            tx.batch_execute(sql)?;
            tx.execute(
                "insert into collabd_migrations (version) values ($1)",
                &[version],
            )?;
            applied += 1;
            info!("postgres: schema migration {version} applied");
        }
        tx.commit()?;
    }
    Ok(applied)
}

impl PostgresStore {
    /// Connects to `url` (`postgres://user:pass@host:5432/db`), migrates the schema, and
    /// says what a commit is worth on this server.
    pub fn open(url: &str) -> Result<PostgresStore, StoreError> {
        off_runtime(|| PostgresStore::open_here(url))
    }

    fn open_here(url: &str) -> Result<PostgresStore, StoreError> {
        let mut writer = Client::connect(url, NoTls)?;
        let reader = Client::connect(url, NoTls)?;
        migrate(&mut writer)?;
        let setting = |client: &mut Client, name: &str| -> Result<String, StoreError> {
            Ok(client.query_one(&format!("show {name}"), &[])?.get(0))
        };
        let synchronous = setting(&mut writer, "synchronous_commit")?;
        let fsync = setting(&mut writer, "fsync")?;
        if synchronous == "off" || fsync == "off" {
            warn!(
                "POSTGRES IS NOT DURABLE: synchronous_commit = {synchronous}, fsync = {fsync}. \
                 An acknowledged write can be lost if the database server crashes; set both \
                 to on for the durability collabd promises."
            );
        } else {
            info!(
                "postgres: synchronous_commit = {synchronous}, fsync = {fsync}: an ack means \
                 the commit holding the update is on the database server's disk"
            );
        }
        Ok(PostgresStore {
            writer: Mutex::new(Conn(Some(writer))),
            reader: Mutex::new(Conn(Some(reader))),
            pending: Mutex::default(),
            committing: Mutex::default(),
            flushing: Mutex::new(()),
            failed: OnceLock::new(),
            down: Mutex::new(None),
            url: url.to_string(),
        })
    }

    /// `which` connection, reconnected first if the database closed it.
    /// The room's newest stored seq (0 if none; its epoch's base after a deletion),
    /// committed or waiting to be.
    pub fn max_seq(&self, room: &str) -> Result<u64, StoreError> {
        let stored: Option<i64> = self
            .conn(&self.reader)?
            .query_one(
                "select greatest(
                     (select max(seq) from collabd_updates where room = $1),
                     (select base from collabd_epochs where room = $1))",
                &[&room],
            )
            .map_err(transient)?
            .get(0);
        let from = (room.to_string(), 0);
        let to = (room.to_string(), u64::MAX);
        let pending = self.with_pending(|p: &Pending, _: Option<u64>| {
            p.updates
                .range(from.clone()..=to.clone())
                .next_back()
                .map(|((_, s), _)| *s)
        });
        Ok(stored.map(seq_of).unwrap_or(0).max(pending.unwrap_or(0)))
    }

    fn conn<'a>(&self, which: &'a Mutex<Conn>) -> Result<MutexGuard<'a, Conn>, StoreError> {
        let mut conn = lock(which);
        if conn.is_closed() {
            let fresh = Client::connect(&self.url, NoTls).map_err(transient)?;
            *conn = Conn(Some(fresh));
            info!("postgres: reconnected");
        }
        Ok(conn)
    }

    fn refuse_if_failed(&self) -> Result<(), StoreError> {
        match self.failed.get() {
            Some(why) => Err(StoreError::Failed(why.clone())),
            None => Ok(()),
        }
    }

    /// Runs `f` over what is remembered and not yet committed: the flush in progress
    /// first, then what came after it.
    fn with_pending<T>(&self, mut f: impl FnMut(&Pending, Option<T>) -> Option<T>) -> Option<T> {
        let committing = lock(&self.committing);
        let pending = lock(&self.pending);
        let found = f(&committing, None);
        f(&pending, found)
    }

    fn commit(&self, batch: &Pending) -> Result<(), StoreError> {
        let mut client = self.conn(&self.writer)?;
        Self::commit_on(&mut client, batch).map_err(transient)
    }

    fn commit_on(client: &mut Client, batch: &Pending) -> Result<(), postgres::Error> {
        let mut tx = client.transaction()?;
        if !batch.updates.is_empty() {
            let rooms: Vec<&str> = batch.updates.keys().map(|(r, _)| r.as_str()).collect();
            let seqs: Vec<i64> = batch.updates.keys().map(|(_, s)| sql_seq(*s)).collect();
            let bytes: Vec<&[u8]> = batch.updates.values().map(Vec::as_slice).collect();
            // Records of a deleted epoch (an archiver that read them before the deletion)
            // are not taken.
            tx.execute(
                "insert into collabd_updates (room, seq, bytes)
                 select u.room, u.seq, u.bytes
                 from unnest($1::text[], $2::bigint[], $3::bytea[]) as u(room, seq, bytes)
                 where not exists (
                     select 1 from collabd_epochs e where e.room = u.room and e.base >= u.seq)
                 on conflict (room, seq) do nothing",
                &[&rooms, &seqs, &bytes],
            )?;
        }
        for (room, snapshot) in &batch.snapshots {
            tx.execute(
                "insert into collabd_snapshots (room, seq, state)
                 select $1, $2, $3
                 where not exists (
                     select 1 from collabd_epochs e where e.room = $1 and e.base > $2)
                 on conflict (room) do update
                   set seq = excluded.seq, state = excluded.state, written_at = now()
                   where collabd_snapshots.seq <= excluded.seq",
                &[room, &sql_seq(snapshot.seq), &snapshot.state],
            )?;
        }
        for ((room, seq), author) in &batch.authors {
            tx.execute(
                "insert into collabd_authors (room, seq, author) values ($1, $2, $3)
                 on conflict (room, seq) do nothing",
                &[room, &sql_seq(*seq), author],
            )?;
        }
        for (room, seq) in &batch.marks {
            tx.execute(
                "insert into collabd_webhooks (room, marked) values ($1, $2)
                 on conflict (room) do update
                   set marked = greatest(collabd_webhooks.marked, excluded.marked)",
                &[room, &sql_seq(*seq)],
            )?;
        }
        for ((room, seq), (state, before_ms)) in &batch.checkpoints {
            tx.execute(
                "insert into collabd_checkpoints (room, seq, state) values ($1, $2, $3)
                 on conflict (room, seq) do nothing",
                &[room, &sql_seq(*seq), state],
            )?;
            tx.execute(
                "delete from collabd_checkpoints
                 where room = $1 and written_at < to_timestamp($2::double precision / 1000)",
                &[room, &(*before_ms as f64)],
            )?;
        }
        tx.commit()
    }
}

impl Store for PostgresStore {
    fn append(&self, room: &str, seq: u64, update: &[u8]) -> Result<(), StoreError> {
        check_room_name(room)?;
        self.refuse_if_failed()?;
        lock(&self.pending)
            .updates
            .insert((room.to_string(), seq), update.to_vec());
        Ok(())
    }

    fn put_snapshot(&self, room: &str, snapshot: &Snapshot) -> Result<(), StoreError> {
        check_room_name(room)?;
        self.refuse_if_failed()?;
        let mut pending = lock(&self.pending);
        let newer = pending
            .snapshots
            .get(room)
            .is_none_or(|s| s.seq <= snapshot.seq);
        if newer {
            pending.snapshots.insert(room.to_string(), snapshot.clone());
        }
        Ok(())
    }

    fn snapshot(&self, room: &str) -> Result<Option<Snapshot>, StoreError> {
        let remembered = self.with_pending(|p: &Pending, found: Option<Snapshot>| {
            p.snapshots.get(room).cloned().or(found)
        });
        if remembered.is_some() {
            return Ok(remembered);
        }
        let row = self
            .conn(&self.reader)?
            .query_opt(
                "select seq, state from collabd_snapshots where room = $1",
                &[&room],
            )
            .map_err(transient)?;
        Ok(row.map(|row| Snapshot {
            seq: seq_of(row.get(0)),
            state: row.get(1),
        }))
    }

    fn updates_after(
        &self,
        room: &str,
        after: u64,
        limit: usize,
    ) -> Result<Vec<LoggedUpdate>, StoreError> {
        let rows = self
            .conn(&self.reader)?
            .query(
                "select seq, bytes, (extract(epoch from written_at) * 1000)::bigint
                 from collabd_updates where room = $1 and seq > $2
                 order by seq limit $3",
                &[
                    &room,
                    &sql_seq(after),
                    &i64::try_from(limit).unwrap_or(i64::MAX),
                ],
            )
            .map_err(transient)?;
        let mut found: BTreeMap<u64, (Vec<u8>, u64)> = rows
            .into_iter()
            .map(|row| (seq_of(row.get(0)), (row.get(1), seq_of(row.get(2)))))
            .collect();
        let from = (room.to_string(), after.saturating_add(1));
        let to = (room.to_string(), u64::MAX);
        let now = super::now_ms();
        self.with_pending(|p: &Pending, _: Option<()>| {
            for ((_, seq), update) in p.updates.range(from.clone()..=to.clone()) {
                found.insert(*seq, (update.clone(), now));
            }
            None
        });
        Ok(found
            .into_iter()
            .take(limit)
            .map(|(seq, (update, at_ms))| LoggedUpdate { seq, update, at_ms })
            .collect())
    }

    fn first_seq(&self, room: &str) -> Result<Option<u64>, StoreError> {
        let stored: Option<i64> = self
            .conn(&self.reader)?
            .query_one(
                "select min(seq) from collabd_updates where room = $1",
                &[&room],
            )
            .map_err(transient)?
            .get(0);
        let from = (room.to_string(), 0);
        let to = (room.to_string(), u64::MAX);
        let remembered = self.with_pending(|p: &Pending, found: Option<u64>| {
            let first = p
                .updates
                .range(from.clone()..=to.clone())
                .next()
                .map(|((_, s), _)| *s);
            match (first, found) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            }
        });
        Ok(match (stored.map(seq_of), remembered) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        })
    }

    fn delete_before(&self, room: &str, seq: u64) -> Result<usize, StoreError> {
        self.refuse_if_failed()?;
        let stored = self
            .conn(&self.writer)?
            .execute(
                "delete from collabd_updates where room = $1 and seq < $2",
                &[&room, &sql_seq(seq)],
            )
            .map_err(transient)?;
        // The authors of what went (kept no longer than their records).
        self.conn(&self.writer)?
            .execute(
                "delete from collabd_authors where room = $1 and seq < $2",
                &[&room, &sql_seq(seq)],
            )
            .map_err(transient)?;
        let mut pending = lock(&self.pending);
        let before = pending.updates.len();
        pending
            .updates
            .retain(|(r, s), _| r.as_str() != room || *s >= seq);
        pending
            .authors
            .retain(|(r, s), _| r.as_str() != room || *s >= seq);
        Ok(usize::try_from(stored).unwrap_or(usize::MAX) + before - pending.updates.len())
    }

    fn put_author(&self, room: &str, seq: u64, author: &str) -> Result<(), StoreError> {
        self.refuse_if_failed()?;
        lock(&self.pending)
            .authors
            .insert((room.to_string(), seq), author.to_string());
        Ok(())
    }

    fn authors(
        &self,
        room: &str,
        from: u64,
        to: u64,
    ) -> Result<std::collections::HashMap<u64, String>, StoreError> {
        let rows = self
            .conn(&self.reader)?
            .query(
                "select seq, author from collabd_authors
                 where room = $1 and seq >= $2 and seq <= $3",
                &[&room, &sql_seq(from), &sql_seq(to)],
            )
            .map_err(transient)?;
        let mut out: std::collections::HashMap<u64, String> = rows
            .iter()
            .map(|row| (seq_of(row.get(0)), row.get(1)))
            .collect();
        let (low, high) = ((room.to_string(), from), (room.to_string(), to));
        self.with_pending(|p: &Pending, _: Option<()>| {
            for ((_, seq), author) in p.authors.range(low.clone()..=high.clone()) {
                out.insert(*seq, author.clone());
            }
            None
        });
        Ok(out)
    }

    fn mark_webhook(&self, room: &str, seq: u64) -> Result<(), StoreError> {
        self.refuse_if_failed()?;
        let mut pending = lock(&self.pending);
        let mark = pending.marks.entry(room.to_string()).or_default();
        *mark = (*mark).max(seq);
        Ok(())
    }

    fn put_webhook(&self, room: &str, delivered: u64, target: u64) -> Result<(), StoreError> {
        self.refuse_if_failed()?;
        self.conn(&self.writer)?
            .execute(
                "insert into collabd_webhooks (room, delivered, target) values ($1, $2, $3)
                 on conflict (room) do update
                   set delivered = excluded.delivered, target = excluded.target",
                &[&room, &sql_seq(delivered), &sql_seq(target)],
            )
            .map_err(transient)?;
        Ok(())
    }

    fn webhooks(&self) -> Result<Vec<(String, u64, u64)>, StoreError> {
        let rows = self
            .conn(&self.reader)?
            .query(
                "select room, delivered, greatest(target, marked) from collabd_webhooks",
                &[],
            )
            .map_err(transient)?;
        let mut out: BTreeMap<String, (u64, u64)> = rows
            .iter()
            .map(|row| (row.get(0), (seq_of(row.get(1)), seq_of(row.get(2)))))
            .collect();
        self.with_pending(|p: &Pending, _: Option<()>| {
            for (room, seq) in &p.marks {
                let entry = out.entry(room.clone()).or_default();
                entry.1 = entry.1.max(*seq);
            }
            None
        });
        Ok(out
            .into_iter()
            .map(|(room, (delivered, target))| (room, delivered, target))
            .collect())
    }

    fn webhook(&self, room: &str) -> Result<Option<(u64, u64)>, StoreError> {
        let stored = self
            .conn(&self.reader)?
            .query_opt(
                "select delivered, greatest(target, marked) from collabd_webhooks
                 where room = $1",
                &[&room],
            )
            .map_err(transient)?
            .map(|row| (seq_of(row.get(0)), seq_of(row.get(1))));
        let marked = self
            .with_pending(|p: &Pending, found: Option<u64>| p.marks.get(room).copied().max(found));
        Ok(match (stored, marked) {
            (None, None) => None,
            (Some((d, t)), m) => Some((d, t.max(m.unwrap_or(0)))),
            (None, Some(m)) => Some((0, m)),
        })
    }

    fn put_checkpoint(
        &self,
        room: &str,
        snapshot: &Snapshot,
        before_ms: u64,
    ) -> Result<(), StoreError> {
        self.refuse_if_failed()?;
        lock(&self.pending).checkpoints.insert(
            (room.to_string(), snapshot.seq),
            (snapshot.state.clone(), before_ms),
        );
        Ok(())
    }

    fn checkpoint_before(&self, room: &str, seq: u64) -> Result<Option<Snapshot>, StoreError> {
        let (low, high) = ((room.to_string(), 0), (room.to_string(), seq));
        let remembered = self.with_pending(|p: &Pending, found: Option<Snapshot>| {
            let newer = p
                .checkpoints
                .range(low.clone()..=high.clone())
                .next_back()
                .map(|((_, s), (state, _))| Snapshot {
                    seq: *s,
                    state: state.clone(),
                });
            match (found, newer) {
                (Some(f), Some(n)) => Some(if n.seq >= f.seq { n } else { f }),
                (f, n) => n.or(f),
            }
        });
        let stored = self
            .conn(&self.reader)?
            .query_opt(
                "select seq, state from collabd_checkpoints
                 where room = $1 and seq <= $2 order by seq desc limit 1",
                &[&room, &sql_seq(seq)],
            )
            .map_err(transient)?
            .map(|row| Snapshot {
                seq: seq_of(row.get(0)),
                state: row.get(1),
            });
        Ok(match (stored, remembered) {
            (Some(s), Some(r)) => Some(if r.seq >= s.seq { r } else { s }),
            (s, r) => r.or(s),
        })
    }

    fn put_version(&self, room: &str, name: &str, snapshot: &Snapshot) -> Result<(), StoreError> {
        check_room_name(room)?;
        self.refuse_if_failed()?;
        self.conn(&self.writer)?
            .execute(
                "insert into collabd_versions (room, name, seq, state) values ($1, $2, $3, $4)
                 on conflict (room, name) do nothing",
                &[&room, &name, &sql_seq(snapshot.seq), &snapshot.state],
            )
            .map_err(transient)?;
        Ok(())
    }

    fn version(&self, room: &str, name: &str) -> Result<Option<Snapshot>, StoreError> {
        Ok(self
            .conn(&self.reader)?
            .query_opt(
                "select seq, state from collabd_versions where room = $1 and name = $2",
                &[&room, &name],
            )
            .map_err(transient)?
            .map(|row| Snapshot {
                seq: seq_of(row.get(0)),
                state: row.get(1),
            }))
    }

    fn versions(&self, room: &str) -> Result<Vec<(String, u64, u64)>, StoreError> {
        let rows = self
            .conn(&self.reader)?
            .query(
                "select name, seq, (extract(epoch from pinned_at) * 1000)::bigint
                 from collabd_versions where room = $1 order by seq, name",
                &[&room],
            )
            .map_err(transient)?;
        Ok(rows
            .iter()
            .map(|row| (row.get(0), seq_of(row.get(1)), seq_of(row.get(2))))
            .collect())
    }

    fn flush(&self) -> Result<(), StoreError> {
        self.refuse_if_failed()?;
        // One flush at a time (the flusher's, and rooms' when they load).
        let _turn = lock(&self.flushing);
        let batch = {
            let mut committing = lock(&self.committing);
            let mut pending = lock(&self.pending);
            committing.absorb(&mut pending);
            committing.clone()
        };
        if batch.is_empty() {
            return Ok(());
        }
        match self.commit(&batch) {
            Ok(()) => {
                if let Some(was) = lock(&self.down).take() {
                    info!("postgres: reachable again (was: {was}); writes are taken again");
                }
                lock(&self.committing).forget(&batch);
                Ok(())
            }
            Err(StoreError::Unavailable(why)) => {
                // Kept in `committing`: the next flush writes it.
                *lock(&self.down) = Some(why.clone());
                Err(StoreError::Unavailable(why))
            }
            Err(e) => {
                let why = format!("postgres commit failed: {e}");
                let _ = self.failed.set(why.clone());
                Err(StoreError::Failed(why))
            }
        }
    }

    fn failure(&self) -> Option<String> {
        self.failed.get().cloned()
    }

    fn unavailable(&self) -> Option<String> {
        lock(&self.down).clone()
    }

    fn put_revocation(&self, key: &str, value: u64) -> Result<(), StoreError> {
        self.refuse_if_failed()?;
        self.conn(&self.writer)?
            .execute(
                "insert into collabd_revocations (key, value) values ($1, $2)
                 on conflict (key) do update set value = excluded.value",
                &[&key, &sql_seq(value)],
            )
            .map_err(transient)?;
        Ok(())
    }

    fn revocations(&self) -> Result<Vec<(String, u64)>, StoreError> {
        let rows = self
            .conn(&self.reader)?
            .query("select key, value from collabd_revocations", &[])
            .map_err(transient)?;
        Ok(rows
            .iter()
            .map(|row| (row.get::<_, String>(0), seq_of(row.get(1))))
            .collect())
    }

    fn epoch(&self, room: &str) -> Result<Epoch, StoreError> {
        let row = self
            .conn(&self.reader)?
            .query_opt(
                "select number, base, graveyard from collabd_epochs where room = $1",
                &[&room],
            )
            .map_err(transient)?;
        Ok(row.map_or_else(Epoch::default, |row| Epoch {
            number: seq_of(row.get(0)),
            base: seq_of(row.get(1)),
            graveyard: row.get(2),
            deleting: false,
        }))
    }

    /// One transaction: atomic, so no deletion is ever half done. What the room appended
    /// and no flush committed yet goes first (the room stopped before the deletion).
    fn delete_room(&self, room: &str, next: &Epoch) -> Result<(), StoreError> {
        check_room_name(room)?;
        self.refuse_if_failed()?;
        let _turn = lock(&self.flushing);
        for pending in [&self.pending, &self.committing] {
            lock(pending).drop_room(room);
        }
        let mut writer = self.conn(&self.writer)?;
        let mut tx = writer.transaction().map_err(transient)?;
        tx.execute(
            "insert into collabd_epochs (room, number, base, graveyard) values ($1, $2, $3, $4)
             on conflict (room) do update set number = excluded.number, base = excluded.base,
                 graveyard = excluded.graveyard",
            &[
                &room,
                &sql_seq(next.number),
                &sql_seq(next.base),
                &next.graveyard,
            ],
        )
        .map_err(transient)?;
        tx.execute("delete from collabd_updates where room = $1", &[&room])
            .map_err(transient)?;
        for table in [
            "collabd_snapshots",
            "collabd_authors",
            "collabd_versions",
            "collabd_checkpoints",
            "collabd_webhooks",
        ] {
            tx.execute(&format!("delete from {table} where room = $1"), &[&room])
                .map_err(transient)?;
        }
        tx.commit().map_err(transient)
    }

    fn rooms(
        &self,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<RoomSummary>, StoreError> {
        let limit = limit.min(super::MAX_LISTING) as i64;
        let after = after.unwrap_or("");
        let rows = self
            .conn(&self.reader)?
            .query(
                "with r as (
                     (select distinct room from collabd_updates
                      where starts_with(room, $1) and room > $2 order by room limit $3)
                     union
                     (select room from collabd_snapshots
                      where starts_with(room, $1) and room > $2 order by room limit $3)
                 )
                 select r.room,
                     greatest(coalesce(max(u.seq), 0), coalesce(s.seq, 0), coalesce(e.base, 0)),
                     coalesce(length(s.state), 0)
                         + coalesce(sum(length(u.bytes)) filter (where u.seq > coalesce(s.seq, 0)), 0),
                     (extract(epoch from greatest(max(u.written_at), s.written_at)) * 1000)::bigint,
                     coalesce(e.number, 0)
                 from r
                 left join collabd_updates u on u.room = r.room
                 left join collabd_snapshots s on s.room = r.room
                 left join collabd_epochs e on e.room = r.room
                 group by r.room, s.seq, s.state, s.written_at, e.base, e.number
                 order by r.room
                 limit $3",
                &[&prefix, &after, &limit],
            )
            .map_err(transient)?;
        Ok(rows
            .iter()
            .map(|row| RoomSummary {
                room: row.get(0),
                seq: seq_of(row.get(1)),
                size: seq_of(row.get(2)),
                changed_ms: row.get::<_, Option<i64>>(3).map_or(0, seq_of),
                epoch: seq_of(row.get(4)),
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fresh database on the machine's PostgreSQL (`COLLABD_TEST_POSTGRES_URL`, default
    /// `postgres://postgres@127.0.0.1:5432/postgres`), dropped afterwards.
    struct Fresh {
        admin: String,
        name: String,
        url: String,
    }

    impl Fresh {
        fn new() -> Fresh {
            static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
            let admin = std::env::var("COLLABD_TEST_POSTGRES_URL")
                .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into());
            let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let name = format!("collabd_unit_{}_{n}", std::process::id());
            let mut client = Client::connect(&admin, NoTls).expect("PostgreSQL reachable");
            client
                .batch_execute(&format!("create database {name}"))
                .unwrap();
            let url = format!("{}/{name}", admin.rsplit_once('/').unwrap().0);
            Fresh { admin, name, url }
        }
    }

    impl Drop for Fresh {
        fn drop(&mut self) {
            if let Ok(mut client) = Client::connect(&self.admin, NoTls) {
                let _ = client.batch_execute(&format!(
                    "drop database if exists {} with (force)",
                    self.name
                ));
            }
        }
    }

    #[test]
    fn keeps_the_store_contract() {
        let db = Fresh::new();
        let store = PostgresStore::open(&db.url).unwrap();
        crate::store::contract::check(&store);
    }

    #[test]
    fn deletes_rooms_lists_them_and_keeps_revocations() {
        let db = Fresh::new();
        let store = PostgresStore::open(&db.url).unwrap();
        crate::store::contract::check_deletion(&store);
        store.put_revocation("sub:alice", 5).unwrap();
        store.put_revocation("sub:alice", 7).unwrap();
        assert_eq!(
            store.revocations().unwrap(),
            vec![("sub:alice".to_string(), 7)]
        );
    }

    #[test]
    fn a_flush_commits_every_room_in_one_transaction_and_reads_see_it_before() {
        let db = Fresh::new();
        let store = PostgresStore::open(&db.url).unwrap();
        for room in 0..20 {
            for seq in 1..=10 {
                store.append(&format!("r{room}"), seq, b"u").unwrap();
            }
        }
        // Visible before the commit.
        assert_eq!(store.updates_after("r3", 0, 100).unwrap().len(), 10);
        store.flush().unwrap();
        let mut probe = Client::connect(&db.url, NoTls).unwrap();
        // Each row's `xmin` is the transaction that inserted it.
        let row = probe
            .query_one(
                "select count(*), count(distinct xmin::text) from collabd_updates",
                &[],
            )
            .unwrap();
        let (rows, transactions): (i64, i64) = (row.get(0), row.get(1));
        assert_eq!((rows, transactions), (200, 1));
        // Reopening finds what was committed, and migrates nothing.
        drop(store);
        let store = PostgresStore::open(&db.url).unwrap();
        assert_eq!(store.load("r7").unwrap().last_seq(), 10);
        assert_eq!(migrate(&mut probe).unwrap(), 0);
    }
}
