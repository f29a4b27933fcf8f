//! Changing a foreign-key clause of a table's definition in place, the
//! way SQLite's documentation gives for changes that leave the stored
//! rows as they are ("Making Other Kinds Of Table Schema Changes",
//! <https://sqlite.org/lang_altertable.html#otheralter>): the text in
//! `sqlite_schema` is written again and the schema version moves on.
//! Migration 25 turns Builds' key to Derivations into one to Evaluations
//! this way, where copying the table would rewrite 10,000,000 rows and
//! their nine indexes.  Rows are not checked against the new key (as
//! when foreign keys are turned on); the old one implied it.

use rusqlite::{Transaction, params};

/// `create`, a `CREATE TABLE` statement, with its table constraint
/// `FOREIGN KEY (...) REFERENCES parent ...` (names compared without
/// case or quotes, any spacing) replaced by `with`; `None` when it has
/// none.
pub fn foreign_key_replaced(create: &str, parent: &str, with: &str) -> Option<String> {
    let open = create.find('(')?;
    // Top-level commas and the closing parenthesis of the definitions.
    let (mut depth, mut quote, mut commas, mut close) = (0usize, None, Vec::new(), None);
    for (i, c) in create.char_indices().skip_while(|(i, _)| *i < open) {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some(_), _) => {}
            (None, '\'' | '"' | '`') => quote = Some(c),
            (None, '[') => quote = Some(']'),
            (None, '(') => depth += 1,
            (None, ')') => {
                depth -= 1;
                if depth == 0 {
                    close = Some(i);
                    break;
                }
            }
            (None, ',') if depth == 1 => commas.push(i),
            _ => {}
        }
    }
    let close = close?;
    // Definition k runs from commas[k-1] + 1 (or the parenthesis) to
    // commas[k] (or the close); the first is a column, never the key.
    let ends: Vec<usize> = commas.iter().copied().chain([close]).collect();
    for k in 1..ends.len() {
        let (start, end) = (commas[k - 1], ends[k]);
        if references(&create[start + 1..end], parent) {
            return Some(format!(
                "{}\n       {with}{}",
                &create[..=start],
                &create[end..]
            ));
        }
    }
    None
}

/// Whether table constraint `def` is a foreign key to `parent`.
fn references(def: &str, parent: &str) -> bool {
    let words: Vec<String> = def
        .split(|c: char| c.is_whitespace() || c == '(' || c == ')' || c == ',')
        .filter(|w| !w.is_empty())
        .map(|w| {
            w.trim_matches(|c| matches!(c, '"' | '`' | '[' | ']'))
                .to_ascii_lowercase()
        })
        .collect();
    let key = words
        .windows(2)
        .position(|w| w[0] == "foreign" && w[1] == "key");
    let starts_as_key = match key {
        Some(0) => true,
        // CONSTRAINT name FOREIGN KEY
        Some(2) => words[0] == "constraint",
        _ => false,
    };
    starts_as_key
        && words
            .windows(2)
            .any(|w| w[0] == "references" && w[1] == parent.to_ascii_lowercase())
}

/// Replaces `table`'s foreign key to `parent` by `with` in its
/// definition, in `tx`; whether it had one.  The connection's own copy
/// of the schema is read again only by `PRAGMA writable_schema = RESET`
/// after the commit ([`reload_schema`]).
pub(super) fn replace_foreign_key(
    tx: &Transaction,
    table: &str,
    parent: &str,
    with: &str,
) -> super::Result<bool> {
    let create: String = tx.query_row(
        "SELECT sql FROM sqlite_schema WHERE type = 'table' AND name = ?1",
        [table],
        |r| r.get(0),
    )?;
    let Some(edited) = foreign_key_replaced(&create, parent, with) else {
        return Ok(false);
    };
    let version: i64 = tx.query_row("PRAGMA schema_version", [], |r| r.get(0))?;
    tx.execute_batch("PRAGMA writable_schema = ON")?;
    tx.execute(
        "UPDATE sqlite_schema SET sql = ?1 WHERE type = 'table' AND name = ?2",
        params![edited, table],
    )?;
    tx.pragma_update(None, "schema_version", version + 1)?;
    tx.execute_batch("PRAGMA writable_schema = OFF")?;
    Ok(true)
}

/// Whether `table` has a foreign key to `parent`, as the connection's
/// copy of the schema says.
pub(super) fn has_foreign_key(tx: &Transaction, table: &str, parent: &str) -> super::Result<bool> {
    Ok(tx.query_row(
        "SELECT EXISTS (SELECT 1 FROM pragma_foreign_key_list(?1) WHERE \"table\" = ?2 COLLATE NOCASE)",
        params![table, parent],
        |r| r.get(0),
    )?)
}

/// Reads the schema again (after [`replace_foreign_key`] committed).
pub(super) fn reload_schema(conn: &rusqlite::Connection) -> super::Result<()> {
    conn.execute_batch("PRAGMA writable_schema = RESET")?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const TO_EVALUATIONS: &str = "FOREIGN KEY (evaluation) REFERENCES Evaluations (id)";

    #[test]
    fn the_key_to_the_parent_is_replaced_and_the_rest_stays() {
        let builds = "CREATE TABLE Builds (
       id            INTEGER NOT NULL PRIMARY KEY AUTOINCREMENT,
       derivation    TEXT NOT NULL,
       stoptime      INTEGER NOT NULL DEFAULT 0, fresh INTEGER NOT NULL DEFAULT 0,
       FOREIGN KEY (derivation, evaluation) REFERENCES Derivations (derivation, evaluation))";
        assert_eq!(
            foreign_key_replaced(builds, "Derivations", TO_EVALUATIONS).unwrap(),
            "CREATE TABLE Builds (
       id            INTEGER NOT NULL PRIMARY KEY AUTOINCREMENT,
       derivation    TEXT NOT NULL,
       stoptime      INTEGER NOT NULL DEFAULT 0, fresh INTEGER NOT NULL DEFAULT 0,
       FOREIGN KEY (evaluation) REFERENCES Evaluations (id))"
        );
        // Other spacing, quotes, a named constraint, another key kept, a
        // comma in a default.
        let other = "create table \"Builds\"(id integer primary key, log text default 'a,b',\
                     constraint k foreign key(derivation,evaluation) references \"derivations\"(derivation,evaluation),\
                     foreign key (log) references Logs (id))";
        assert_eq!(
            foreign_key_replaced(other, "Derivations", "X").unwrap(),
            "create table \"Builds\"(id integer primary key, log text default 'a,b',\n       X,\
             foreign key (log) references Logs (id))"
        );
        assert_eq!(foreign_key_replaced(other, "Outputs", "X"), None);
        assert_eq!(
            foreign_key_replaced(
                "CREATE TABLE x (derivations TEXT REFERENCES Derivations)",
                "Derivations",
                "X"
            ),
            None,
            "a column's own REFERENCES clause is not a table constraint"
        );
    }

    #[test]
    fn the_edit_is_seen_by_the_connection_after_the_reload() {
        let mut conn = rusqlite::Connection::open_in_memory().unwrap();
        conn.execute_batch(
            "PRAGMA foreign_keys = ON;
             CREATE TABLE Evaluations (id INTEGER PRIMARY KEY);
             INSERT INTO Evaluations (id) VALUES (1);
             CREATE TABLE p (a TEXT, evaluation INTEGER, PRIMARY KEY (a, evaluation));
             CREATE TABLE c (id INTEGER PRIMARY KEY, a TEXT, evaluation INTEGER,
                             FOREIGN KEY (a, evaluation) REFERENCES p (a, evaluation));",
        )
        .unwrap();
        let no_p = "INSERT INTO c (a, evaluation) VALUES ('x', 1)";
        let no_evaluation = "INSERT INTO c (a, evaluation) VALUES ('x', 2)";
        assert!(conn.execute(no_p, []).is_err(), "the old key holds before");
        let tx = conn.transaction().unwrap();
        assert!(replace_foreign_key(&tx, "c", "p", TO_EVALUATIONS).unwrap());
        assert!(
            !replace_foreign_key(&tx, "c", "p", TO_EVALUATIONS).unwrap(),
            "gone already"
        );
        tx.commit().unwrap();
        reload_schema(&conn).unwrap();
        conn.execute(no_p, []).unwrap();
        let err = conn.execute(no_evaluation, []).unwrap_err();
        assert!(err.to_string().contains("FOREIGN KEY"), "{err}");
        let parents: Vec<String> = conn
            .prepare("SELECT \"table\" FROM pragma_foreign_key_list('c')")
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .collect::<std::result::Result<_, _>>()
            .unwrap();
        assert_eq!(parents, ["Evaluations"]);
        let check: String = conn
            .query_row("PRAGMA integrity_check", [], |r| r.get(0))
            .unwrap();
        assert_eq!(check, "ok");
    }
}
