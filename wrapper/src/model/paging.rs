//! Keyset paging, written once: rows after the cursor's id, in id order, one more than the
//! page so the caller knows whether another page follows.
//!
//! The seek is `id > coalesce($n::uuid, nil)`, never a test of the cursor for null or'd with
//! the comparison: that is a filter in Postgres's generic plan (used after five executions of a
//! prepared statement), so every page would scan the tenant's index from its start.

use uuid::Uuid;

/// One page to read: after `cursor` (exclusive), at most `limit` rows.
#[derive(Debug, Clone, Copy)]
pub struct Keyset {
    /// The last id of the previous page.
    pub cursor: Option<Uuid>,
    /// Rows per page (validated at the edge).
    pub limit: i64,
}

impl Keyset {
    /// The clause that ends a query over `column`: the seek past the cursor bound as
    /// `$cursor`, the order, and the limit bound as `$limit` (bind [`fetch`](Self::fetch)).
    pub fn clause(column: &str, cursor: u8, limit: u8) -> String {
        format!(
            "and {column} > coalesce(${cursor}::uuid, '00000000-0000-0000-0000-000000000000') \
             order by {column} limit ${limit}"
        )
    }

    /// How many rows to fetch: one more than the page.
    pub fn fetch(&self) -> i64 {
        self.limit + 1
    }
}
