//! The journal: every write this node recorded, in the form it forwards it, kept so it can be
//! sent again (to a peer that was down, as a relay, after a take-over) and so the delivery
//! rows held in memory can be written again after a crash (`held.rs`).
//!
//! It is two tables (`schema.rs`):
//!
//! - `seen`, the durable dedup record: one row per write, keyed by (`messageId`,
//!   `clusterGroupId`), with the write's journal id;
//! - `journal`, the writes themselves, one row per commit (or per [`ROW_BYTES`] of a large
//!   commit): the commit's writes encoded one after another in a blob ([`Entry::encode`]),
//!   with the journal id of the first; the others follow on from it, one apart.
//!
//! A row per write, with a unique index for the dedup key and an index by age, cost three
//! B-tree inserts per write and its own cells on the WAL's pages; under load a commit carries
//! hundreds of writes, and its journal rows are written as runs of overflow pages.
//! (BENCHMARKS.md, "2026-12-06, later": about a sixth more writes per second.)
//!
//! Ids are handed out by the writer ([`Appender`]), not by SQLite: the next id follows the
//! greatest one the journal holds, which is why pruning keeps the newest journal row.

use rusqlite::{params, Connection, OptionalExtension};

use crate::raw::{Param, RawStatement};
use crate::{Result, StorageError};

/// One write as the journal holds it; the texts are borrowed from the encoded row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Entry<'a> {
    pub message_id: &'a str,
    pub group: &'a str,
    pub msg_type: &'a str,
    pub origin: &'a str,
    /// The HLC stamp's text form (`Hlc::to_text`), which sorts as the stamps do.
    pub hlc: &'a str,
    /// The path as a JSON array of instance ids.
    pub path: &'a str,
    /// The encoded message in its forwarded form.
    pub body: &'a str,
    /// The peers the write was owed to when it was recorded, as a JSON array; none when it
    /// owed nobody.
    pub recipients: Option<&'a str>,
}

/// The length written in place of an absent field.
const ABSENT: u32 = u32::MAX;

/// Fields per entry, each a length and its bytes.
const FIELDS: usize = 8;

impl<'a> Entry<'a> {
    /// Appends this entry: each field as its length (4 bytes, little-endian) and its bytes,
    /// in the order of the struct; an absent `recipients` as the length `u32::MAX`.
    pub(crate) fn encode(&self, out: &mut Vec<u8>) {
        for field in [
            self.message_id,
            self.group,
            self.msg_type,
            self.origin,
            self.hlc,
            self.path,
            self.body,
        ] {
            put(out, Some(field));
        }
        put(out, self.recipients);
    }

    /// Decodes the entry at the start of `bytes`; returns it and the bytes after it.
    fn decode(bytes: &'a [u8]) -> Result<(Entry<'a>, &'a [u8])> {
        let mut rest = bytes;
        let mut next = || -> Result<Option<&'a str>> {
            let (field, after) = take(rest)?;
            rest = after;
            Ok(field)
        };
        let mut text = || next()?.ok_or_else(|| corrupt("a field that must be present is not"));
        let entry = Entry {
            message_id: text()?,
            group: text()?,
            msg_type: text()?,
            origin: text()?,
            hlc: text()?,
            path: text()?,
            body: text()?,
            recipients: next()?,
        };
        Ok((entry, rest))
    }
}

fn put(out: &mut Vec<u8>, field: Option<&str>) {
    match field {
        Some(s) => {
            let len = u32::try_from(s.len()).expect("a journal field is far below 4 GiB");
            out.extend_from_slice(&len.to_le_bytes());
            out.extend_from_slice(s.as_bytes());
        }
        None => out.extend_from_slice(&ABSENT.to_le_bytes()),
    }
}

/// The bytes the entry at the start of `bytes` takes, from its fields' lengths alone (its
/// texts are checked when it is decoded).
fn entry_len(bytes: &[u8]) -> Result<usize> {
    let mut at = 0;
    for _ in 0..FIELDS {
        let len = bytes
            .get(at..at + 4)
            .ok_or_else(|| corrupt("an entry ends inside a field's length"))?;
        let len = u32::from_le_bytes(len.try_into().expect("four bytes"));
        at += 4;
        if len != ABSENT {
            at += len as usize;
            if at > bytes.len() {
                return Err(corrupt("an entry ends inside a field"));
            }
        }
    }
    Ok(at)
}

/// One field from the start of `bytes`, and the bytes after it.
fn take(bytes: &[u8]) -> Result<(Option<&str>, &[u8])> {
    let (len, rest) = bytes
        .split_first_chunk::<4>()
        .ok_or_else(|| corrupt("an entry ends inside a field's length"))?;
    let len = u32::from_le_bytes(*len);
    if len == ABSENT {
        return Ok((None, rest));
    }
    let len = len as usize;
    if rest.len() < len {
        return Err(corrupt("an entry ends inside a field"));
    }
    let (field, rest) = rest.split_at(len);
    let field = std::str::from_utf8(field).map_err(|_| corrupt("a field is not UTF-8"))?;
    Ok((Some(field), rest))
}

fn corrupt(what: &str) -> StorageError {
    StorageError::Corrupt(format!("journal row: {what}"))
}

/// The entries of one journal row, in id order.
pub(crate) fn decode_all(mut bytes: &[u8]) -> Result<Vec<Entry<'_>>> {
    let mut out = Vec::new();
    while !bytes.is_empty() {
        let (entry, rest) = Entry::decode(bytes)?;
        out.push(entry);
        bytes = rest;
    }
    Ok(out)
}

/// The greatest journal id there is, 0 when the journal is empty.
pub(crate) fn last_id(c: &Connection) -> Result<i64> {
    Ok(
        c.prepare_cached("SELECT first + count - 1 FROM journal ORDER BY first DESC LIMIT 1")?
            .query_row([], |r| r.get(0))
            .optional()?
            .unwrap_or(0),
    )
}

/// The writer's side: hands out journal ids and collects the commit's entries into its row.
///
/// It holds a statement prepared on the writer's connection, so it must be dropped before
/// that connection closes (the writer declares it first; see `raw.rs`).
pub(crate) struct Appender {
    /// The id the next entry gets; the row's first entry has `next_id - count`.
    next_id: i64,
    /// Entries in `row`.
    count: i64,
    row: Vec<u8>,
    /// The insert of a row, prepared once. It binds the row where it lies, where rusqlite
    /// would have SQLite copy it (`raw.rs`).
    insert: Option<RawStatement>,
}

/// Where an [`Appender`] stood, to go back to if an operation is rolled back.
#[derive(Clone, Copy)]
pub(crate) struct Mark {
    count: i64,
    len: usize,
}

const INSERT_ROW: &str =
    "INSERT INTO journal (first, count, received_at, entries) VALUES (?1, ?2, ?3, ?4)";

/// Bytes of entries past which a journal row is full, and the next entry starts a new row. A
/// commit of a thousand writes would otherwise make a row of half a megabyte, allocated,
/// copied and freed whole on each side of SQLite when it is written and whenever it is read:
/// at 7 nodes those allocations took the origin's peak memory a few MiB higher. A row of this
/// size holds about a hundred writes of 100-byte values, and costs one insert for them.
pub(crate) const ROW_BYTES: usize = 32 << 10;

/// Capacity a row's buffer keeps between commits: a full row and one large value.
const KEEP_CAPACITY: usize = 2 * ROW_BYTES;

impl Appender {
    pub(crate) fn open(c: &Connection) -> Result<Appender> {
        let next_id = last_id(c)? + 1;
        Ok(Appender {
            next_id,
            count: 0,
            row: Vec::new(),
            insert: None,
        })
    }

    /// Whether the row holds [`ROW_BYTES`] or more: it is flushed before the next entry.
    pub(crate) fn is_full(&self) -> bool {
        self.row.len() >= ROW_BYTES
    }

    /// The id the next entry will get.
    pub(crate) fn next_id(&self) -> i64 {
        self.next_id
    }

    /// The greatest id handed out, in this batch or committed before (0 if none).
    pub(crate) fn last_id(&self) -> i64 {
        self.next_id - 1
    }

    /// Adds an entry to the batch's row; returns its id ([`Appender::next_id`] before the call).
    pub(crate) fn push(&mut self, entry: &Entry<'_>) -> i64 {
        let id = self.next_id;
        entry.encode(&mut self.row);
        self.count += 1;
        self.next_id += 1;
        id
    }

    pub(crate) fn mark(&self) -> Mark {
        Mark {
            count: self.count,
            len: self.row.len(),
        }
    }

    /// Forgets the entries pushed since `mark` (their operation was rolled back), and hands
    /// their ids out again. No flush comes between a mark and its rewind.
    pub(crate) fn rewind(&mut self, mark: Mark) {
        self.next_id -= self.count - mark.count;
        self.count = mark.count;
        self.row.truncate(mark.len);
    }

    /// Starts a batch with nothing pushed: entries of a transaction that was rolled back are
    /// dropped. Their ids are not handed out again, which leaves a gap; ids only need to grow.
    pub(crate) fn begin(&mut self) {
        self.count = 0;
        self.row.clear();
        if self.row.capacity() > KEEP_CAPACITY {
            self.row.shrink_to(KEEP_CAPACITY);
        }
    }

    /// Inserts the entries pushed since [`Appender::begin`] or the last flush as one journal
    /// row, in the caller's transaction. Called at the end of a batch, and before any
    /// operation that reads the journal, so it finds the batch's own writes.
    pub(crate) fn flush(&mut self, c: &Connection, received_at: i64) -> Result<()> {
        if self.count > 0 {
            if self.insert.is_none() {
                self.insert = Some(RawStatement::prepare(c, INSERT_ROW)?);
            }
            let insert = self.insert.as_mut().expect("prepared above");
            insert.execute(&[
                (self.next_id - self.count).into(),
                self.count.into(),
                received_at.into(),
                Param::Blob(&self.row),
            ])?;
        }
        self.begin();
        Ok(())
    }
}

/// Reads entries by id, keeping the last journal row it read: ids are mostly read in order,
/// and one row holds a whole commit's writes.
pub(crate) struct Reader<'c> {
    c: &'c Connection,
    first: i64,
    row: Vec<u8>,
    /// Where each entry of `row` starts.
    starts: Vec<usize>,
}

impl<'c> Reader<'c> {
    pub(crate) fn new(c: &'c Connection) -> Reader<'c> {
        Reader {
            c,
            first: 0,
            row: Vec::new(),
            starts: Vec::new(),
        }
    }

    /// The entry with this id, or none when the journal does not hold it (pruned).
    pub(crate) fn get(&mut self, id: i64) -> Result<Option<Entry<'_>>> {
        if !self.holds(id) {
            let found = self
                .c
                .prepare_cached(
                    "SELECT first, entries FROM journal WHERE first <= ?1 ORDER BY first DESC LIMIT 1",
                )?
                .query_row(params![id], |r| Ok((r.get::<_, i64>(0)?, r.get::<_, Vec<u8>>(1)?)))
                .optional()?;
            let Some((first, row)) = found else {
                return Ok(None);
            };
            self.starts.clear();
            let mut at = 0;
            while at < row.len() {
                self.starts.push(at);
                at += entry_len(&row[at..])?;
            }
            self.first = first;
            self.row = row;
            if !self.holds(id) {
                return Ok(None);
            }
        }
        let start = self.starts[(id - self.first) as usize];
        Ok(Some(Entry::decode(&self.row[start..])?.0))
    }

    fn holds(&self, id: i64) -> bool {
        id >= self.first && id - self.first < self.starts.len() as i64
    }
}

/// The `entries` blob, the second column of `r`.
fn entries<'r>(r: &'r rusqlite::Row<'_>) -> Result<&'r [u8]> {
    r.get_ref(1)?
        .as_blob()
        .map_err(|e| corrupt(&format!("its entries: {e}")))
}

/// Calls `each` with every entry whose id is greater than `after`, in id order.
pub(crate) fn each_after(
    c: &Connection,
    after: i64,
    each: impl FnMut(i64, Entry<'_>) -> Result<()>,
) -> Result<()> {
    each_entry(
        c,
        "SELECT first, entries FROM journal
         WHERE first >= coalesce((SELECT max(first) FROM journal WHERE first <= ?1), 0)
         ORDER BY first",
        after,
        after,
        each,
    )
}

/// Calls `each` with every entry of the rows committed at or after `since` (ms), in id order.
pub(crate) fn each_received_since(
    c: &Connection,
    since: i64,
    each: impl FnMut(i64, Entry<'_>) -> Result<()>,
) -> Result<()> {
    each_entry(
        c,
        "SELECT first, entries FROM journal WHERE received_at >= ?1 ORDER BY first",
        since,
        i64::MIN,
        each,
    )
}

/// Calls `each` with the entries past `after` of the journal rows `sql` selects (`first` and
/// `entries`, given `param` as `?1`).
fn each_entry(
    c: &Connection,
    sql: &str,
    param: i64,
    after: i64,
    mut each: impl FnMut(i64, Entry<'_>) -> Result<()>,
) -> Result<()> {
    let mut st = c.prepare_cached(sql)?;
    let mut rows = st.query(params![param])?;
    while let Some(r) = rows.next()? {
        let first: i64 = r.get(0)?;
        for (i, entry) in decode_all(entries(r)?)?.into_iter().enumerate() {
            let id = first + i as i64;
            if id > after {
                each(id, entry)?;
            }
        }
    }
    Ok(())
}

/// The journal id of a recorded write, from its dedup key.
pub(crate) fn id_of(c: &Connection, message_id: &str, group: &str) -> Result<Option<i64>> {
    Ok(
        c.prepare_cached("SELECT id FROM seen WHERE message_id = ?1 AND cluster_group = ?2")?
            .query_row(params![message_id, group], |r| r.get(0))
            .optional()?,
    )
}

/// How many writes the journal holds.
pub(crate) fn count(c: &Connection) -> Result<u64> {
    Ok(
        c.query_row("SELECT coalesce(sum(count), 0) FROM journal", [], |r| {
            r.get::<_, i64>(0)
        })? as u64,
    )
}

/// Deletes the journal rows committed before `before` (ms) whose writes no delivery row and
/// no queued apply refers to any more, and their writes' dedup keys; the newest row stays,
/// whatever its age, so ids never go back. Returns how many writes went.
///
/// A row goes whole or not at all: one write with an open or dead delivery keeps the other
/// writes of its commit, and their dedup keys, until it goes too.
pub(crate) fn prune(c: &Connection, before: i64) -> Result<u64> {
    let candidates: Vec<(i64, i64)> = c
        .prepare_cached(
            "SELECT first, count FROM journal
             WHERE received_at < ?1 AND first < (SELECT max(first) FROM journal)
             ORDER BY first",
        )?
        .query_map(params![before], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<std::result::Result<_, _>>()?;
    let Some(&(first, count)) = candidates.last() else {
        return Ok(0);
    };
    // Acknowledged rows of these writes go first; what still refers to a write after that
    // keeps its journal row.
    c.prepare_cached("DELETE FROM deliveries WHERE state = 'acked' AND msg < ?1")?
        .execute(params![first + count])?;
    let queued_from: Option<i64> = c
        .prepare_cached("SELECT min(msg) FROM apply_queue")?
        .query_row([], |r| r.get(0))?;
    let mut referred =
        c.prepare_cached("SELECT EXISTS (SELECT 1 FROM deliveries WHERE msg BETWEEN ?1 AND ?2)")?;
    let mut read = c.prepare_cached("SELECT entries FROM journal WHERE first = ?1")?;
    let mut forget =
        c.prepare_cached("DELETE FROM seen WHERE message_id = ?1 AND cluster_group = ?2")?;
    let mut drop_row = c.prepare_cached("DELETE FROM journal WHERE first = ?1")?;
    let mut gone = 0;
    for (first, count) in candidates {
        let last = first + count - 1;
        if queued_from.is_some_and(|q| q <= last)
            || referred.query_row(params![first, last], |r| r.get::<_, bool>(0))?
        {
            continue;
        }
        let row: Vec<u8> = read.query_row(params![first], |r| r.get(0))?;
        for entry in decode_all(&row)? {
            forget.execute(params![entry.message_id, entry.group])?;
        }
        drop_row.execute(params![first])?;
        gone += count as u64;
    }
    Ok(gone)
}

/// Moves a journal kept as one table row per write (the layout before `seen` and `journal`)
/// into the two tables, in one transaction, keeping every write's id. Nothing to do when the
/// old table is not there.
pub(crate) fn migrate(c: &Connection) -> Result<()> {
    let old: bool = c.query_row(
        "SELECT EXISTS (SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'messages')",
        [],
        |r| r.get(0),
    )?;
    if !old {
        return Ok(());
    }
    let with_recipients: bool = c.query_row(
        "SELECT EXISTS (SELECT 1 FROM pragma_table_info('messages') WHERE name = 'recipients')",
        [],
        |r| r.get(0),
    )?;
    let recipients = if with_recipients {
        "recipients"
    } else {
        "NULL"
    };
    tracing::info!(
        "moving the journal to its layout of one row per commit; this reads and writes every journal row once"
    );
    let tx = c.unchecked_transaction()?;
    let moved = {
        let mut st = tx.prepare(&format!(
            "SELECT id, message_id, cluster_group, msg_type, origin, hlc, path, body, received_at,
                    {recipients}
             FROM messages ORDER BY id"
        ))?;
        let mut rows = st.query([])?;
        let mut insert_seen =
            tx.prepare("INSERT INTO seen (message_id, cluster_group, id) VALUES (?1, ?2, ?3)")?;
        let mut insert_row = tx.prepare(INSERT_ROW)?;
        // Rows of up to this many writes (and about `ROW_BYTES`), with consecutive ids; each
        // keeps the latest receipt time among its writes, so none is pruned sooner than it
        // would have been.
        const PER_ROW: i64 = 512;
        let (mut first, mut count, mut received_at, mut row) = (0i64, 0i64, 0i64, Vec::new());
        let mut moved = 0u64;
        while let Some(r) = rows.next()? {
            let id: i64 = r.get(0)?;
            let text = |i| -> Result<&str> {
                r.get_ref(i)?
                    .as_str()
                    .map_err(|e| StorageError::Corrupt(format!("journal row {id}: {e}")))
            };
            let entry = Entry {
                message_id: text(1)?,
                group: text(2)?,
                msg_type: text(3)?,
                origin: text(4)?,
                hlc: text(5)?,
                path: text(6)?,
                body: text(7)?,
                recipients: r
                    .get_ref(9)?
                    .as_str_or_null()
                    .map_err(|e| StorageError::Corrupt(format!("journal row {id}: {e}")))?,
            };
            if count > 0 && (id != first + count || count == PER_ROW || row.len() >= ROW_BYTES) {
                insert_row.execute(params![first, count, received_at, &row[..]])?;
                (count, received_at) = (0, 0);
                row.clear();
            }
            if count == 0 {
                first = id;
            }
            insert_seen.execute(params![entry.message_id, entry.group, id])?;
            entry.encode(&mut row);
            count += 1;
            received_at = received_at.max(r.get::<_, i64>(8)?);
            moved += 1;
        }
        if count > 0 {
            insert_row.execute(params![first, count, received_at, &row[..]])?;
        }
        moved
    };
    tx.execute_batch("DROP TABLE messages")?;
    tx.commit()?;
    tracing::info!(
        writes = moved,
        "the journal was moved to its layout of one row per commit"
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry<'a>(id: &'a str, recipients: Option<&'a str>) -> Entry<'a> {
        Entry {
            message_id: id,
            group: "singleton",
            msg_type: "SK",
            origin: "con-a",
            hlc: "0000000000010000",
            path: r#"["con-a"]"#,
            body: r#"{"type":"SK","key":"k","value":"é"}"#,
            recipients,
        }
    }

    #[test]
    fn entries_read_back_as_they_were_written() {
        let written = [
            entry("m1", Some(r#"["b","c"]"#)),
            entry("m2", None),
            entry("", Some("")),
        ];
        let mut row = Vec::new();
        for e in &written {
            e.encode(&mut row);
        }
        assert_eq!(decode_all(&row).unwrap(), written);
    }

    #[test]
    fn a_cut_or_damaged_row_is_an_error_naming_the_journal() {
        let mut row = Vec::new();
        entry("m1", None).encode(&mut row);
        assert_eq!(entry_len(&row).unwrap(), row.len());
        for cut in [1, 5, row.len() - 1] {
            let err = decode_all(&row[..cut]).unwrap_err().to_string();
            assert!(err.contains("journal row"), "{err}");
            // The walk the reader takes over a row, by the lengths alone, sees it too.
            assert!(entry_len(&row[..cut]).is_err());
        }
        // The first field's text, made invalid UTF-8.
        let mut damaged = row.clone();
        damaged[4] = 0xff;
        assert!(decode_all(&damaged).is_err());
        // An absent field where one must be present.
        let mut absent = row;
        absent[..4].copy_from_slice(&ABSENT.to_le_bytes());
        assert!(decode_all(&absent).is_err());
    }

    #[test]
    fn an_appender_rewound_hands_the_same_ids_out_again_and_a_rolled_back_batch_leaves_a_gap() {
        let c = Connection::open_in_memory().unwrap();
        c.execute_batch(crate::schema::SCHEMA).unwrap();
        let mut a = Appender::open(&c).unwrap();
        assert_eq!(a.push(&entry("m1", None)), 1);
        let mark = a.mark();
        assert_eq!(a.push(&entry("m2", None)), 2);
        a.rewind(mark);
        assert_eq!(a.push(&entry("m3", None)), 2, "m2's id again");
        a.flush(&c, 7).unwrap();
        // A batch rolled back: its ids are not reused.
        a.push(&entry("m4", None));
        a.begin();
        assert_eq!(a.push(&entry("m5", None)), 4);
        a.flush(&c, 8).unwrap();
        let mut r = Reader::new(&c);
        let ids: Vec<Option<String>> = (1..=5)
            .map(|id| r.get(id).unwrap().map(|e| e.message_id.to_owned()))
            .collect();
        assert_eq!(
            ids,
            [
                Some("m1".into()),
                Some("m3".into()),
                None,
                Some("m5".into()),
                None
            ]
        );
        assert_eq!(last_id(&c).unwrap(), 4);
        assert_eq!(Appender::open(&c).unwrap().next_id(), 5);
        assert_eq!(count(&c).unwrap(), 3);
    }
}
