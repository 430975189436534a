//! Read-only SQL over the lake: what `POST /v1/sql` and `campo sql` accept, checked before
//! anything is planned, so both refuse the same statements with the same words.
//!
//! A statement is refused when it could change the lake or the files around it (DDL, DML,
//! COPY, CREATE EXTERNAL TABLE); a table reference is refused when it is not one of the lake's
//! tables by its bare name (a path, a URL, another catalog or schema).

use deltalake::datafusion::execution::context::{SQLOptions, SessionState};
use deltalake::datafusion::logical_expr::LogicalPlan;
use deltalake::datafusion::sql::parser::{DFParserBuilder, Statement};
use deltalake::datafusion::sql::sqlparser::ast::Statement as SqlStatement;

use crate::TableKind;

/// What the caller allows besides plain queries.
#[derive(Debug, Clone, Copy, Default)]
pub struct Allow {
    /// EXPLAIN of a query, SET, SHOW, RESET: they change nothing on disk (an analyst's shell
    /// wants them; the HTTP API does not).
    pub session_statements: bool,
}

/// Why a statement or a table reference is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("{0}")]
    Syntax(String),
    #[error("no SQL statement was given")]
    Empty,
    #[error("only queries (SELECT, WITH, VALUES) are allowed; {0} is refused: the lake is read-only here")]
    ReadOnly(String),
    #[error("{0} is not a lake table; queries read only the lake's tables, by name")]
    NotALakeTable(String),
    #[error("there is no table {0:?} in the lake (its tables: {tables})", tables = table_names().join(", "))]
    UnknownTable(String),
}

impl Refusal {
    /// A short stable code, e.g. for an API error envelope.
    pub fn code(&self) -> &'static str {
        match self {
            Refusal::Syntax(_) | Refusal::Empty => "invalid_sql",
            Refusal::ReadOnly(_) => "read_only",
            Refusal::NotALakeTable(_) => "table_not_allowed",
            Refusal::UnknownTable(_) => "unknown_table",
        }
    }
}

pub fn table_names() -> Vec<&'static str> {
    TableKind::ALL.iter().map(|k| k.name()).collect()
}

/// Splits `sql` into statements (a syntax error is a refusal).
pub fn parse(sql: &str) -> Result<Vec<Statement>, Refusal> {
    let statements = DFParserBuilder::new(sql)
        .build()
        .and_then(|mut p| p.parse_statements())
        .map_err(|e| Refusal::Syntax(syntax_message(&e)))?;
    Ok(statements.into_iter().collect())
}

/// The parser's words without DataFusion's wrapping (`SQL error: ParserError("...")`).
fn syntax_message(e: &deltalake::datafusion::error::DataFusionError) -> String {
    use deltalake::datafusion::error::DataFusionError;
    use deltalake::datafusion::sql::sqlparser::parser::ParserError;
    match e {
        DataFusionError::SQL(err, _) => match &**err {
            ParserError::ParserError(m) | ParserError::TokenizerError(m) => format!("syntax error: {m}"),
            ParserError::RecursionLimitExceeded => "syntax error: the statement is nested too deeply".into(),
        },
        other => other.strip_backtrace(),
    }
}

/// Refuses a statement that is not a query (or, when allowed, a session statement).
pub fn check_statement(statement: &Statement, allow: Allow) -> Result<(), Refusal> {
    let what = match statement {
        Statement::Statement(st) => match &**st {
            SqlStatement::Query(_) => None,
            SqlStatement::Set(_) | SqlStatement::ShowVariable { .. } | SqlStatement::ShowTables { .. }
            | SqlStatement::ShowColumns { .. }
                if allow.session_statements =>
            {
                None
            }
            SqlStatement::Explain { statement, .. } if allow.session_statements => {
                return check_statement(&Statement::Statement(statement.clone()), Allow::default());
            }
            other => Some(statement_kind(other)),
        },
        Statement::Explain(e) if allow.session_statements => return check_statement(&e.statement, Allow::default()),
        Statement::Reset(_) if allow.session_statements => None,
        Statement::CreateExternalTable(_) => Some("CREATE EXTERNAL TABLE".to_string()),
        Statement::CopyTo(_) => Some("COPY".to_string()),
        Statement::Explain(_) => Some("EXPLAIN".to_string()),
        Statement::Reset(_) => Some("RESET".to_string()),
    };
    match what {
        Some(what) => Err(Refusal::ReadOnly(what)),
        None => Ok(()),
    }
}

/// The lake tables a statement reads; refuses any other reference.
pub fn lake_tables(state: &SessionState, statement: &Statement) -> Result<Vec<TableKind>, Refusal> {
    let references = state.resolve_table_references(statement).map_err(|e| Refusal::Syntax(e.to_string()))?;
    let mut kinds = Vec::new();
    for r in &references {
        let table = r.table();
        let kind = TableKind::ALL.into_iter().find(|k| k.name() == table);
        match (r.schema(), kind) {
            (None, Some(kind)) => kinds.push(kind),
            _ if r.schema().is_some() || table.contains(['/', '.', ':', '\\']) => {
                return Err(Refusal::NotALakeTable(r.to_string()));
            }
            _ => return Err(Refusal::UnknownTable(table.to_string())),
        }
    }
    Ok(kinds)
}

/// DataFusion's own check of the plan: no DDL, no DML, and statements only when allowed.
pub fn verify_plan(plan: &LogicalPlan, allow: Allow) -> Result<(), Refusal> {
    SQLOptions::new()
        .with_allow_ddl(false)
        .with_allow_dml(false)
        .with_allow_statements(allow.session_statements)
        .verify_plan(plan)
        .map_err(|e| Refusal::ReadOnly(e.strip_backtrace()))
}

/// The statement's leading keywords, e.g. `INSERT`, `CREATE TABLE`, `SET`.
fn statement_kind(st: &SqlStatement) -> String {
    let text = st.to_string();
    let words: Vec<&str> = text.split_whitespace().take(2).collect();
    match words.as_slice() {
        [first, second, ..] if matches!(first.to_uppercase().as_str(), "CREATE" | "DROP" | "ALTER" | "TRUNCATE") => {
            format!("{} {}", first.to_uppercase(), second.to_uppercase())
        }
        [first, ..] => first.to_uppercase(),
        [] => "this statement".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(sql: &str, allow: Allow) -> Result<(), Refusal> {
        check_statement(&parse(sql)?.remove(0), allow)
    }

    #[test]
    fn queries_pass_and_writes_are_refused_by_name() {
        let shell = Allow { session_statements: true };
        assert!(one("SELECT 1", Allow::default()).is_ok());
        assert!(one("WITH a AS (SELECT 1) SELECT * FROM a", Allow::default()).is_ok());
        for (sql, what) in [
            ("INSERT INTO readings VALUES (1)", "INSERT"),
            ("DELETE FROM readings", "DELETE"),
            ("UPDATE readings SET hz = 1", "UPDATE"),
            ("CREATE TABLE t AS SELECT 1", "CREATE TABLE"),
            ("DROP TABLE readings", "DROP TABLE"),
            ("COPY (SELECT 1) TO '/tmp/x.csv'", "COPY"),
            ("CREATE EXTERNAL TABLE t STORED AS CSV LOCATION '/etc/passwd'", "CREATE EXTERNAL TABLE"),
            ("EXPLAIN INSERT INTO readings VALUES (1)", "INSERT"),
        ] {
            assert_eq!(one(sql, shell), Err(Refusal::ReadOnly(what.into())), "{sql}");
        }
        assert!(one("EXPLAIN SELECT 1", shell).is_ok());
        assert!(one("SET datafusion.execution.batch_size = 1024", shell).is_ok());
        assert_eq!(one("EXPLAIN SELECT 1", Allow::default()), Err(Refusal::ReadOnly("EXPLAIN".into())));
        assert_eq!(one("SET x = 1", Allow::default()), Err(Refusal::ReadOnly("SET".into())));
        assert!(matches!(parse("SELEC 1"), Err(Refusal::Syntax(_))));
    }
}
