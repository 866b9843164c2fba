//! Row structs read by column name on both backends, and the closed sets
//! of names their text columns hold.

/// Declares a row struct and its `sqlx::FromRow` for SQLite and PostgreSQL,
/// each field read from the column of its name. `field: Type as String`
/// reads text and converts it with `TryFrom<String>` (closed sets of names:
/// an unknown one is a decoding error).
///
/// What `#[derive(sqlx::FromRow)]` does, without sqlx's `derive` feature:
/// that feature turns on the proc macro's own SQLite and PostgreSQL drivers,
/// building SQLite's C code a second time in every clean build.
#[macro_export]
macro_rules! row {
    (
        $(#[$meta:meta])*
        pub struct $name:ident {
            $($(#[$field_meta:meta])* pub $field:ident : $ty:ty $(as $stored:ty)?),+ $(,)?
        }
    ) => {
        $(#[$meta])*
        pub struct $name {
            $($(#[$field_meta])* pub $field: $ty),+
        }

        $crate::row!(@from_row $name, $crate::sqlx::sqlite::SqliteRow, $($field: $ty $(as $stored)?),+);
        $crate::row!(@from_row $name, $crate::sqlx::postgres::PgRow, $($field: $ty $(as $stored)?),+);
    };
    (@from_row $name:ident, $row:ty, $($field:ident : $ty:ty $(as $stored:ty)?),+) => {
        impl<'r> $crate::sqlx::FromRow<'r, $row> for $name {
            fn from_row(row: &'r $row) -> Result<Self, $crate::sqlx::Error> {
                Ok($name {
                    $($field: $crate::row!(@read row, $field, $ty $(as $stored)?)),+
                })
            }
        }
    };
    (@read $row:ident, $field:ident, $ty:ty) => {
        $crate::sqlx::Row::try_get::<$ty, _>($row, stringify!($field))?
    };
    (@read $row:ident, $field:ident, $ty:ty as $stored:ty) => {{
        let stored: $stored = $crate::sqlx::Row::try_get($row, stringify!($field))?;
        <$ty>::try_from(stored).map_err(|error| $crate::sqlx::Error::ColumnDecode {
            index: stringify!($field).into(),
            source: Box::new(error),
        })?
    }};
}

/// A name stored in a text column that is none of its type's.
#[derive(Debug, thiserror::Error)]
#[error("unknown {kind} {name:?}")]
pub struct UnknownName {
    pub kind: &'static str,
    pub name: String,
}

/// An enum stored as text, exhaustive both ways: `as_str`, `Display`, and
/// `TryFrom<String>` failing with [`UnknownName`] (read it with [`row!`]'s
/// `field: Kind as String`).
#[macro_export]
macro_rules! stored_names {
    ($(#[$meta:meta])* $kind:ident { $($variant:ident = $name:literal),+ $(,)? }) => {
        $(#[$meta])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq)]
        pub enum $kind {
            $($variant),+
        }

        impl $kind {
            pub fn as_str(self) -> &'static str {
                match self {
                    $($kind::$variant => $name),+
                }
            }
        }

        impl std::fmt::Display for $kind {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl TryFrom<String> for $kind {
            type Error = $crate::UnknownName;

            fn try_from(name: String) -> Result<Self, $crate::UnknownName> {
                match name.as_str() {
                    $($name => Ok($kind::$variant),)+
                    _ => Err($crate::UnknownName { kind: stringify!($kind), name }),
                }
            }
        }
    };
}

/// A stored value that cannot be read back (`table` row, `what` field): a
/// decoding error, so it surfaces as an internal error and is logged.
pub fn corrupt(table: &str, what: &str, error: impl std::fmt::Display) -> crate::StoreError {
    crate::StoreError::Sqlx(sqlx::Error::Decode(
        format!("{table} row: bad {what}: {error}").into(),
    ))
}

/// A uuid stored as text.
pub fn stored_uuid(table: &str, what: &str, text: &str) -> Result<uuid::Uuid, crate::StoreError> {
    uuid::Uuid::parse_str(text).map_err(|e| corrupt(table, what, e))
}

#[cfg(test)]
mod tests {
    use sqlx::sqlite::SqlitePoolOptions;

    #[derive(Debug, PartialEq)]
    pub enum Colour {
        Red,
    }

    impl TryFrom<String> for Colour {
        type Error = std::io::Error;

        fn try_from(name: String) -> Result<Self, Self::Error> {
            match name.as_str() {
                "red" => Ok(Colour::Red),
                _ => Err(std::io::Error::other(format!("unknown colour {name:?}"))),
            }
        }
    }

    crate::row! {
        #[derive(Debug, PartialEq)]
        pub struct Paint {
            pub id: i64,
            pub colour: Colour as String,
            pub note: Option<String>,
        }
    }

    #[tokio::test]
    async fn fields_are_read_by_name_and_names_must_be_known() {
        let pool = SqlitePoolOptions::new()
            .connect("sqlite::memory:")
            .await
            .unwrap();
        let paint: Paint = sqlx::query_as("SELECT NULL AS note, 'red' AS colour, 7 AS id")
            .fetch_one(&pool)
            .await
            .unwrap();
        assert_eq!(
            paint,
            Paint {
                id: 7,
                colour: Colour::Red,
                note: None
            }
        );
        let error = sqlx::query_as::<_, Paint>("SELECT NULL AS note, 'mauve' AS colour, 7 AS id")
            .fetch_one(&pool)
            .await
            .unwrap_err();
        assert!(error.to_string().contains("mauve"), "{error}");
    }
}
