//! Reading the lake back with DataFusion: every table registered by name.

use deltalake::arrow::array::{Array, AsArray};
use deltalake::arrow::compute::cast;
use deltalake::arrow::datatypes::DataType;
use deltalake::arrow::record_batch::RecordBatch;
use deltalake::datafusion::prelude::SessionContext;
use futures_util::StreamExt;

use crate::error::{LakeError, Result, delta};
use crate::lake::{Lake, TableKind};

impl Lake {
    /// A DataFusion session with every campo table that exists in this lake registered by name
    /// and campo's functions (`campo_udfs`, default EVU weights) registered.
    pub async fn session(&self) -> Result<SessionContext> {
        self.session_at(&[]).await
    }

    /// [`Lake::session`] with some tables read as of a version (time travel), e.g. to read
    /// exactly what a writer had committed at some point.
    pub async fn session_at(&self, pinned: &[(TableKind, u64)]) -> Result<SessionContext> {
        self.session_with(&TableKind::ALL, pinned).await
    }

    /// A session with only `kinds` registered (those that exist): a query that needs two small
    /// tables does not open the bronze logs.
    pub async fn session_of(&self, kinds: &[TableKind]) -> Result<SessionContext> {
        self.session_with(kinds, &[]).await
    }

    async fn session_with(&self, kinds: &[TableKind], pinned: &[(TableKind, u64)]) -> Result<SessionContext> {
        let ctx = SessionContext::new();
        self.register_into(&ctx, kinds, pinned).await?;
        Ok(ctx)
    }

    /// Registers campo's functions and the tables `kinds` that exist (some as of a version) in
    /// a session the caller built, e.g. one with a memory limit.
    pub async fn register_into(&self, ctx: &SessionContext, kinds: &[TableKind], pinned: &[(TableKind, u64)]) -> Result<()> {
        campo_udfs::register(ctx, [1.0; 4]);
        for &kind in kinds {
            let name = kind.name();
            let table = match pinned.iter().find(|(k, _)| *k == kind) {
                Some((_, v)) => self.open_at(name, *v).await,
                None => self.open(name).await,
            };
            let Ok(table) = table else { continue };
            table.update_datafusion_session(&ctx.state()).map_err(delta(name))?;
            let provider = table.table_provider().await.map_err(|source| LakeError::Query {
                table: name.into(),
                source,
            })?;
            ctx.register_table(name, provider).map_err(|source| LakeError::Query {
                table: name.into(),
                source,
            })?;
        }
        Ok(())
    }

    /// Runs one query over the lake and collects its batches.
    pub async fn query(&self, sql: &str) -> Result<Vec<RecordBatch>> {
        self.query_at(sql, &[]).await
    }

    /// [`Lake::query`] with some tables read as of a version.
    pub async fn query_at(&self, sql: &str, pinned: &[(TableKind, u64)]) -> Result<Vec<RecordBatch>> {
        let ctx = self.session_at(pinned).await?;
        let q = |source| LakeError::Query { table: "(query)".into(), source };
        ctx.sql(sql).await.map_err(q)?.collect().await.map_err(q)
    }

    /// Streams the single string column a query returns, one value at a time (nulls skipped),
    /// without collecting the whole result. Returns how many values were seen.
    pub async fn for_each_string(&self, sql: &str, mut f: impl FnMut(&str)) -> Result<usize> {
        let ctx = self.session().await?;
        let q = |source| LakeError::Query { table: "(query)".into(), source };
        let mut stream = ctx.sql(sql).await.map_err(q)?.execute_stream().await.map_err(q)?;
        let mut n = 0;
        while let Some(batch) = stream.next().await {
            let batch = batch.map_err(q)?;
            let col = cast(batch.column(0), &DataType::Utf8)
                .map_err(|e| q(deltalake::datafusion::error::DataFusionError::ArrowError(Box::new(e), None)))?;
            let strings = col.as_string::<i32>();
            for i in 0..strings.len() {
                if strings.is_valid(i) {
                    f(strings.value(i));
                    n += 1;
                }
            }
        }
        Ok(n)
    }
}
