//! A prepared statement run through SQLite's C API, for the statements every write runs and
//! the journal row every commit inserts.
//!
//! rusqlite binds every text parameter with `SQLITE_TRANSIENT`, which makes SQLite allocate a
//! copy of the text, copy it and free the copy when the statement is reset. For a write's
//! thirteen text columns, binding was about a tenth of a replica's instructions (callgrind).
//! Here texts are bound with `SQLITE_STATIC`: SQLite reads them where they are, and a replica
//! runs about 5 % fewer instructions per write, an origin about 4 % (BENCHMARKS.md). That is
//! sound only while the texts outlive the statement's use of them, so the one way to run a
//! statement, [`RawStatement::execute`], binds, steps, resets and clears the bindings
//! in one call that borrows the texts for its whole length: no pointer is left behind in SQLite
//! once it returns.

use std::ffi::{c_int, CStr};

use rusqlite::{ffi, Connection};

/// One parameter of [`RawStatement::execute`], by position.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Param<'a> {
    Text(&'a str),
    Blob(&'a [u8]),
    Int(i64),
    Null,
}

impl<'a> From<&'a str> for Param<'a> {
    fn from(s: &'a str) -> Self {
        Param::Text(s)
    }
}

impl From<i64> for Param<'_> {
    fn from(v: i64) -> Self {
        Param::Int(v)
    }
}

impl<'a> From<Option<&'a str>> for Param<'a> {
    fn from(s: Option<&'a str>) -> Self {
        s.map_or(Param::Null, Param::Text)
    }
}

/// A statement prepared once on the writer's connection and kept for the connection's life.
///
/// It holds SQLite's handles as raw pointers, so it must be dropped (finalized) before the
/// connection it was prepared on is closed: the owner declares it before the connection, and
/// Rust drops fields in declaration order.
pub(crate) struct RawStatement {
    stmt: *mut ffi::sqlite3_stmt,
    db: *mut ffi::sqlite3,
    params: usize,
}

// SAFETY: the statement belongs to one connection and moves with it to the writer's thread,
// where both are used; rusqlite's `Connection` is `Send` for the same reason. SQLite's
// multi-thread mode (rusqlite opens connections `NO_MUTEX` on a thread-safe build) allows a
// connection and its statements on any one thread at a time.
unsafe impl Send for RawStatement {}

impl RawStatement {
    /// Prepares `sql` (one statement) on `conn`.
    pub(crate) fn prepare(conn: &Connection, sql: &str) -> rusqlite::Result<Self> {
        let len = c_int::try_from(sql.len()).map_err(|_| {
            rusqlite::Error::SqliteFailure(
                ffi::Error::new(ffi::SQLITE_TOOBIG),
                Some("statement text too long".into()),
            )
        })?;
        let mut stmt = std::ptr::null_mut();
        // SAFETY: `handle` is the live connection's; `sql` is valid for `len` bytes, and
        // SQLite copies what it needs of it while preparing.
        let (db, rc) = unsafe {
            let db = conn.handle();
            let rc = ffi::sqlite3_prepare_v3(
                db,
                sql.as_ptr().cast(),
                len,
                ffi::SQLITE_PREPARE_PERSISTENT,
                &mut stmt,
                std::ptr::null_mut(),
            );
            (db, rc)
        };
        if rc != ffi::SQLITE_OK {
            return Err(error(db, rc));
        }
        if stmt.is_null() {
            return Err(rusqlite::Error::SqliteFailure(
                ffi::Error::new(ffi::SQLITE_MISUSE),
                Some("empty statement".into()),
            ));
        }
        // SAFETY: `stmt` was just prepared.
        let params = unsafe { ffi::sqlite3_bind_parameter_count(stmt) } as usize;
        Ok(RawStatement { stmt, db, params })
    }

    /// Binds `params` (all of the statement's, in order), runs the statement to its end and
    /// returns the rows it changed.
    pub(crate) fn execute(&mut self, params: &[Param<'_>]) -> rusqlite::Result<usize> {
        if params.len() != self.params {
            return Err(rusqlite::Error::InvalidParameterCount(
                params.len(),
                self.params,
            ));
        }
        let out = self.bind_and_step(params);
        // SAFETY: `stmt` is live. Reset ends the run (its error, if any, is the step's,
        // already taken); clearing the bindings drops every pointer to `params`' texts.
        unsafe {
            ffi::sqlite3_reset(self.stmt);
            ffi::sqlite3_clear_bindings(self.stmt);
        }
        out
    }

    fn bind_and_step(&mut self, params: &[Param<'_>]) -> rusqlite::Result<usize> {
        for (i, p) in params.iter().enumerate() {
            let col = i as c_int + 1;
            // SAFETY: `stmt` is live and `col` is within its parameter count. A text or blob
            // is bound `SQLITE_STATIC`: it stays borrowed until `execute` has cleared the
            // bindings, after the last step.
            let rc = unsafe {
                match *p {
                    Param::Text(s) => ffi::sqlite3_bind_text(
                        self.stmt,
                        col,
                        s.as_ptr().cast(),
                        c_len(s.len())?,
                        ffi::SQLITE_STATIC(),
                    ),
                    Param::Blob(b) => ffi::sqlite3_bind_blob(
                        self.stmt,
                        col,
                        b.as_ptr().cast(),
                        c_len(b.len())?,
                        ffi::SQLITE_STATIC(),
                    ),
                    Param::Int(v) => ffi::sqlite3_bind_int64(self.stmt, col, v),
                    Param::Null => ffi::sqlite3_bind_null(self.stmt, col),
                }
            };
            if rc != ffi::SQLITE_OK {
                return Err(error(self.db, rc));
            }
        }
        // SAFETY: `stmt` is live with every parameter bound.
        match unsafe { ffi::sqlite3_step(self.stmt) } {
            ffi::SQLITE_DONE => {}
            ffi::SQLITE_ROW => {
                return Err(rusqlite::Error::ExecuteReturnedResults);
            }
            rc => return Err(error(self.db, rc)),
        }
        // SAFETY: the connection is live; the count is of the statement just run.
        Ok(unsafe { ffi::sqlite3_changes64(self.db) } as usize)
    }
}

impl Drop for RawStatement {
    fn drop(&mut self) {
        // SAFETY: `stmt` is live and finalized once, here.
        unsafe {
            ffi::sqlite3_finalize(self.stmt);
        }
    }
}

/// The error SQLite reports for `rc` on `db`, with its message.
#[cold]
fn error(db: *mut ffi::sqlite3, rc: c_int) -> rusqlite::Error {
    // SAFETY: `db` is a live connection; the message is copied before anything else runs.
    let message = unsafe {
        let p = ffi::sqlite3_errmsg(db);
        (!p.is_null()).then(|| CStr::from_ptr(p).to_string_lossy().into_owned())
    };
    rusqlite::Error::SqliteFailure(ffi::Error::new(rc), message)
}

/// A text's or blob's length as SQLite takes it; past `c_int`, the error SQLite gives a value
/// too big.
fn c_len(len: usize) -> rusqlite::Result<c_int> {
    c_int::try_from(len)
        .map_err(|_| rusqlite::Error::SqliteFailure(ffi::Error::new(ffi::SQLITE_TOOBIG), None))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conn() -> Connection {
        let c = Connection::open_in_memory().unwrap();
        c.execute_batch("CREATE TABLE t (a TEXT NOT NULL, b INTEGER, c TEXT, UNIQUE (a))")
            .unwrap();
        c
    }

    #[test]
    fn texts_ints_and_nulls_are_stored_as_given() {
        let c = conn();
        let mut st =
            RawStatement::prepare(&c, "INSERT INTO t (a, b, c) VALUES (?1, ?2, ?3)").unwrap();
        for i in 0..3i64 {
            // A text that is gone once the call returns: the row must still hold it.
            let a = format!("key-{i}-é\"\\");
            let c_text = (i % 2 == 0).then(|| format!("v{i}"));
            let n = st
                .execute(&[a.as_str().into(), i.into(), c_text.as_deref().into()])
                .unwrap();
            assert_eq!(n, 1);
        }
        let rows: Vec<(String, i64, Option<String>)> = c
            .prepare("SELECT a, b, c FROM t ORDER BY b")
            .unwrap()
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .unwrap()
            .collect::<rusqlite::Result<_>>()
            .unwrap();
        assert_eq!(
            rows,
            vec![
                ("key-0-é\"\\".into(), 0, Some("v0".into())),
                ("key-1-é\"\\".into(), 1, None),
                ("key-2-é\"\\".into(), 2, Some("v2".into())),
            ]
        );
    }

    #[test]
    fn blobs_are_stored_byte_for_byte() {
        let c = conn();
        let mut st =
            RawStatement::prepare(&c, "INSERT INTO t (a, b, c) VALUES ('k', 1, ?1)").unwrap();
        {
            // Bytes that are gone once the call returns, zeros and invalid UTF-8 among them.
            let bytes: Vec<u8> = (0..=255u8).chain([0, 0xff, 0]).collect();
            assert_eq!(st.execute(&[Param::Blob(&bytes)]).unwrap(), 1);
        }
        let stored: Vec<u8> = c.query_row("SELECT c FROM t", [], |r| r.get(0)).unwrap();
        assert_eq!(stored, (0..=255u8).chain([0, 0xff, 0]).collect::<Vec<_>>());
    }

    #[test]
    fn changes_count_only_the_rows_changed() {
        let c = conn();
        let mut st = RawStatement::prepare(
            &c,
            "INSERT INTO t (a, b, c) VALUES (?1, ?2, NULL) ON CONFLICT (a) DO NOTHING",
        )
        .unwrap();
        assert_eq!(st.execute(&["x".into(), 1.into()]).unwrap(), 1);
        assert_eq!(st.execute(&["x".into(), 2.into()]).unwrap(), 0);
        assert_eq!(st.execute(&["y".into(), 3.into()]).unwrap(), 1);
    }

    #[test]
    fn errors_name_the_problem_and_leave_the_statement_usable() {
        let c = conn();
        let mut st =
            RawStatement::prepare(&c, "INSERT INTO t (a, b, c) VALUES (?1, ?2, ?3)").unwrap();
        let e = st
            .execute(&[Param::Null, 1.into(), Param::Null])
            .unwrap_err();
        assert!(e.to_string().contains("NOT NULL"), "{e}");
        assert_eq!(
            e.sqlite_error_code(),
            Some(rusqlite::ErrorCode::ConstraintViolation)
        );
        let e = st.execute(&["only one".into()]).unwrap_err();
        assert!(
            matches!(e, rusqlite::Error::InvalidParameterCount(1, 3)),
            "{e}"
        );
        assert_eq!(st.execute(&["a".into(), 1.into(), Param::Null]).unwrap(), 1);
        let e = RawStatement::prepare(&c, "INSERT INTO nowhere VALUES (1)")
            .err()
            .unwrap();
        assert!(e.to_string().contains("no such table: nowhere"), "{e}");
    }

    #[test]
    fn a_statement_that_returns_rows_is_refused() {
        let c = conn();
        let mut st = RawStatement::prepare(&c, "SELECT ?1").unwrap();
        assert!(matches!(
            st.execute(&[1.into()]),
            Err(rusqlite::Error::ExecuteReturnedResults)
        ));
    }
}
