//! Keyset paging for every service's list RPCs, newest first. The page
//! token is opaque to clients: it names the last row of the page before.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

const DEFAULT_PAGE_SIZE: i64 = 50;
const MAX_PAGE_SIZE: i64 = 500;
/// A token encodes a timestamp and a UUID; anything longer is not ours.
const MAX_PAGE_TOKEN_BYTES: usize = 512;

/// A page request the client got wrong; names the request field.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PageError {
    #[error("must be between 0 (default 50) and 500")]
    Size,
    #[error("is not a token from this list")]
    Token,
}

impl PageError {
    /// The request field at fault.
    pub fn field(&self) -> &'static str {
        match self {
            PageError::Size => "page_size",
            PageError::Token => "page_token",
        }
    }
}

/// One page to read: at most `limit` rows strictly after `after` (the
/// `created_at` and id of the previous page's last row; `None` at first).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Page {
    pub limit: i64,
    pub after: Option<(i64, String)>,
}

impl Page {
    /// From a request's `page_size` and `page_token`, the size checked first.
    pub fn parse(page_size: i32, page_token: &str) -> Result<Page, PageError> {
        let limit = match page_size {
            0 => DEFAULT_PAGE_SIZE,
            n if (1..=MAX_PAGE_SIZE as i32).contains(&n) => i64::from(n),
            _ => return Err(PageError::Size),
        };
        Ok(Page {
            limit,
            after: decode_token(page_token)?,
        })
    }

    /// Binds for [`newest_first`]'s `$2..=$5`: cursor `created_at`, cursor
    /// id, 1 on the first page, limit.
    pub fn binds(&self) -> (i64, String, i64, i64) {
        let (created_at, id) = self.after.clone().unwrap_or((i64::MAX, String::new()));
        (created_at, id, i64::from(self.after.is_none()), self.limit)
    }

    /// The token of the next page, given the rows read and each row's
    /// `created_at` and id; empty when this page was the last.
    pub fn next_token<T>(&self, rows: &[T], key: impl Fn(&T) -> (i64, &str)) -> String {
        match rows.last() {
            Some(last) if rows.len() as i64 == self.limit => {
                let (created_at, id) = key(last);
                URL_SAFE_NO_PAD.encode(format!("{created_at}:{id}"))
            }
            _ => String::new(),
        }
    }
}

fn decode_token(token: &str) -> Result<Option<(i64, String)>, PageError> {
    if token.is_empty() {
        return Ok(None);
    }
    if token.len() > MAX_PAGE_TOKEN_BYTES {
        return Err(PageError::Token);
    }
    let bytes = URL_SAFE_NO_PAD
        .decode(token)
        .map_err(|_| PageError::Token)?;
    let text = String::from_utf8(bytes).map_err(|_| PageError::Token)?;
    let (created_at, id) = text.split_once(':').ok_or(PageError::Token)?;
    // Every id is a UUID; anything else did not come from this list.
    let id = uuid::Uuid::parse_str(id).map_err(|_| PageError::Token)?;
    let created_at = created_at.parse().map_err(|_| PageError::Token)?;
    Ok(Some((created_at, id.to_string())))
}

/// One page of an organization's rows of `table`, newest first. Binds: `$1`
/// organization id, then [`Page::binds`].
pub fn newest_first(columns: &str, table: &str) -> String {
    format!(
        "SELECT {columns} FROM {table} WHERE org_id = $1 \
         AND (created_at < $2 OR (created_at = $2 AND id < $3) OR $4 = 1) \
         ORDER BY created_at DESC, id DESC LIMIT $5"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_default_and_are_bounded() {
        assert_eq!(Page::parse(0, "").unwrap().limit, 50);
        assert_eq!(Page::parse(500, "").unwrap().limit, 500);
        for bad in [-1, 501] {
            let error = Page::parse(bad, "").unwrap_err();
            assert_eq!(
                (error, PageError::Size.field()),
                (PageError::Size, "page_size")
            );
        }
    }

    #[test]
    fn tokens_round_trip_and_foreign_ones_are_refused() {
        let id = uuid::Uuid::new_v4().to_string();
        let first = Page::parse(2, "").unwrap();
        assert_eq!(first.binds(), (i64::MAX, String::new(), 1, 2));
        let rows = [(7, id.clone()), (5, id.clone())];
        let token = first.next_token(&rows, |(at, id)| (*at, id.as_str()));
        let next = Page::parse(2, &token).unwrap();
        assert_eq!(next.after, Some((5, id.clone())));
        assert_eq!(next.binds(), (5, id.clone(), 0, 2));
        assert_eq!(
            next.next_token(&rows[..1], |(at, id)| (*at, id.as_str())),
            ""
        );
        let not_uuid = URL_SAFE_NO_PAD.encode("5:x");
        let too_long = "A".repeat(MAX_PAGE_TOKEN_BYTES + 1);
        for bad in ["%%%", not_uuid.as_str(), too_long.as_str()] {
            assert_eq!(Page::parse(2, bad), Err(PageError::Token), "{bad}");
        }
    }
}
