//! Products, cart lines and money as the Cart server keeps them, the bounds
//! on everything a request may put in them, and their messages.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use trellis::cart::v1 as pb;
use trellis::common::v1::Money;
use uuid::Uuid;

use crate::error::{CartServiceError, Result};

/// Lines per cart, and per stock reservation.
pub const MAX_LINES: usize = 100;
pub const MAX_QUANTITY: i32 = 99;
pub const MAX_OPTIONS_PER_LINE: usize = 16;
pub const MAX_OPTION_QUANTITY: i32 = 10;
pub const MAX_SKU_BYTES: usize = 64;
pub const MAX_NAME_BYTES: usize = 200;
pub const MAX_CATEGORY_BYTES: usize = 64;
pub const MAX_DESCRIPTION_BYTES: usize = 2000;
pub const MAX_OPTION_TEXT_BYTES: usize = 64;
/// A price above this many minor units (ten billion dollars) is a typo;
/// with it, no cart total can overflow.
pub const MAX_PRICE_MINOR: i64 = 1_000_000_000_000;
/// Units of one product on hand.
pub const MAX_STOCK: i64 = 1_000_000_000;

pub use trellis_runtime::time::{now_ms, timestamp};

pub fn id(field: &str, value: &str) -> Result<Uuid> {
    if value.is_empty() {
        return Err(CartServiceError::invalid(field, "required"));
    }
    Uuid::parse_str(value).map_err(|_| CartServiceError::invalid(field, "must be a UUID"))
}

/// Money as stored: minor units and an ISO-4217 code.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Price {
    pub amount_minor: i64,
    pub currency: String,
}

impl Price {
    pub fn checked(field: &str, money: Option<&Money>) -> Result<Price> {
        let Some(money) = money else {
            return Err(CartServiceError::invalid(field, "required"));
        };
        if !(0..=MAX_PRICE_MINOR).contains(&money.amount_minor) {
            return Err(CartServiceError::invalid(
                field,
                format!("amount_minor must be 0 to {MAX_PRICE_MINOR}"),
            ));
        }
        let currency = &money.currency;
        if currency.len() != 3 || !currency.bytes().all(|b| b.is_ascii_uppercase()) {
            return Err(CartServiceError::invalid(
                field,
                "currency must be a 3-letter upper case ISO-4217 code",
            ));
        }
        Ok(Price {
            amount_minor: money.amount_minor,
            currency: currency.clone(),
        })
    }

    pub fn message(&self) -> Money {
        Money {
            amount_minor: self.amount_minor,
            currency: self.currency.clone(),
        }
    }
}

fn printable(text: &str) -> bool {
    !text.chars().any(char::is_control)
}

pub fn checked_sku(sku: &str) -> Result<String> {
    let ok = !sku.is_empty()
        && sku.len() <= MAX_SKU_BYTES
        && sku
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if !ok {
        return Err(CartServiceError::invalid(
            "sku",
            format!("must be 1 to {MAX_SKU_BYTES} bytes of letters, digits and - _ ."),
        ));
    }
    Ok(sku.to_owned())
}

/// Free text within `max` bytes, without control characters; `required`
/// refuses an empty one.
pub fn checked_text(field: &str, text: &str, max: usize, required: bool) -> Result<String> {
    let text = text.trim();
    if required && text.is_empty() {
        return Err(CartServiceError::invalid(field, "required"));
    }
    if text.len() > max || !printable(text) {
        return Err(CartServiceError::invalid(
            field,
            format!("at most {max} bytes, without control characters"),
        ));
    }
    Ok(text.to_owned())
}

pub fn checked_stock(field: &str, stock: i64) -> Result<i64> {
    if !(0..=MAX_STOCK).contains(&stock) {
        return Err(CartServiceError::invalid(
            field,
            format!("must be 0 to {MAX_STOCK}"),
        ));
    }
    Ok(stock)
}

pub fn checked_quantity(field: &str, quantity: i32) -> Result<i64> {
    if !(1..=MAX_QUANTITY).contains(&quantity) {
        return Err(CartServiceError::invalid(
            field,
            format!("must be 1 to {MAX_QUANTITY}"),
        ));
    }
    Ok(i64::from(quantity))
}

/// A customisation of a line, e.g. meat: pastor ×2.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LineOption {
    pub group: String,
    pub value: String,
    pub quantity: i32,
}

pub fn checked_options(options: &[pb::ItemOption]) -> Result<Vec<LineOption>> {
    if options.len() > MAX_OPTIONS_PER_LINE {
        return Err(CartServiceError::invalid(
            "options",
            format!("at most {MAX_OPTIONS_PER_LINE} per line"),
        ));
    }
    options
        .iter()
        .map(|option| {
            let group = checked_text("options.group", &option.group, MAX_OPTION_TEXT_BYTES, true)?;
            let value = checked_text("options.value", &option.value, MAX_OPTION_TEXT_BYTES, true)?;
            let quantity = match option.quantity {
                0 => 1,
                n if (1..=MAX_OPTION_QUANTITY).contains(&n) => n,
                _ => {
                    return Err(CartServiceError::invalid(
                        "options.quantity",
                        format!("must be 1 to {MAX_OPTION_QUANTITY} (0 = 1)"),
                    ));
                }
            };
            Ok(LineOption {
                group,
                value,
                quantity,
            })
        })
        .collect()
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Product {
    pub id: Uuid,
    pub org_id: Uuid,
    pub sku: String,
    pub name: String,
    pub category: String,
    pub price: Price,
    /// `None` = unlimited.
    pub stock: Option<i64>,
    pub active: bool,
    pub description: String,
    pub created_at: i64,
    pub updated_at: i64,
}

impl Product {
    pub fn message(&self) -> pb::Product {
        pb::Product {
            product_id: self.id.to_string(),
            sku: self.sku.clone(),
            name: self.name.clone(),
            category: self.category.clone(),
            price: Some(self.price.message()),
            stock: self.stock,
            active: self.active,
            description: self.description.clone(),
            created_at: Some(timestamp(self.created_at)),
            updated_at: Some(timestamp(self.updated_at)),
        }
    }
}

/// One line of a cart; the product's sku, name and price as when added.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Line {
    pub id: Uuid,
    pub product_id: Uuid,
    pub sku: String,
    pub name: String,
    pub quantity: i64,
    pub options: Vec<LineOption>,
    pub unit_price: Price,
    pub added_at: i64,
}

impl Line {
    pub fn message(&self) -> pb::CartItem {
        pb::CartItem {
            item_id: self.id.to_string(),
            product_id: self.product_id.to_string(),
            sku: self.sku.clone(),
            name: self.name.clone(),
            quantity: self.quantity as i32,
            options: self
                .options
                .iter()
                .map(|o| pb::ItemOption {
                    group: o.group.clone(),
                    value: o.value.clone(),
                    quantity: o.quantity,
                })
                .collect(),
            unit_price: Some(self.unit_price.message()),
            // Bounded prices and quantities: no overflow.
            line_total: Some(Money {
                amount_minor: self.unit_price.amount_minor * self.quantity,
                currency: self.unit_price.currency.clone(),
            }),
            added_at: Some(timestamp(self.added_at)),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CartState {
    pub session_id: Uuid,
    pub version: i64,
    pub updated_at: i64,
    pub lines: Vec<Line>,
}

impl CartState {
    pub fn message(&self) -> pb::Cart {
        let mut totals: BTreeMap<&str, i64> = BTreeMap::new();
        for line in &self.lines {
            *totals.entry(&line.unit_price.currency).or_default() +=
                line.unit_price.amount_minor * line.quantity;
        }
        pb::Cart {
            session_id: self.session_id.to_string(),
            items: self.lines.iter().map(Line::message).collect(),
            subtotal: totals
                .into_iter()
                .map(|(currency, amount_minor)| Money {
                    amount_minor,
                    currency: currency.to_owned(),
                })
                .collect(),
            version: self.version,
            updated_at: (self.updated_at > 0).then(|| timestamp(self.updated_at)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(price: i64, currency: &str, quantity: i64) -> Line {
        Line {
            id: Uuid::new_v4(),
            product_id: Uuid::new_v4(),
            sku: "t".into(),
            name: "Taco".into(),
            quantity,
            options: Vec::new(),
            unit_price: Price {
                amount_minor: price,
                currency: currency.into(),
            },
            added_at: 1,
        }
    }

    #[test]
    fn totals_are_per_currency() {
        let cart = CartState {
            session_id: Uuid::new_v4(),
            version: 3,
            updated_at: 1,
            lines: vec![
                line(250, "USD", 3),
                line(100, "MXN", 2),
                line(199, "USD", 1),
            ],
        };
        let subtotal = cart.message().subtotal;
        assert_eq!(
            subtotal
                .iter()
                .map(|m| (m.currency.as_str(), m.amount_minor))
                .collect::<Vec<_>>(),
            [("MXN", 200), ("USD", 949)]
        );
    }

    #[test]
    fn the_largest_cart_cannot_overflow() {
        let most = MAX_PRICE_MINOR
            .checked_mul(i64::from(MAX_QUANTITY))
            .and_then(|line| line.checked_mul(MAX_LINES as i64));
        assert!(most.is_some());
    }

    #[test]
    fn prices_and_skus_are_bounded() {
        let money = |amount_minor, currency: &str| Money {
            amount_minor,
            currency: currency.into(),
        };
        assert!(Price::checked("price", Some(&money(1250, "USD"))).is_ok());
        assert!(Price::checked("price", Some(&money(-1, "USD"))).is_err());
        assert!(Price::checked("price", Some(&money(1, "usd"))).is_err());
        assert!(Price::checked("price", Some(&money(1, "USDX"))).is_err());
        assert!(Price::checked("price", None).is_err());
        assert!(checked_sku("TACO-01.a_b").is_ok());
        assert!(checked_sku("").is_err());
        assert!(checked_sku("taco 1").is_err());
        assert!(checked_sku(&"x".repeat(65)).is_err());
        assert!(checked_text("name", "  ", 10, true).is_err());
        assert!(checked_text("name", "a\nb", 10, false).is_err());
        assert!(checked_quantity("quantity", 0).is_err());
        assert!(checked_quantity("quantity", 100).is_err());
    }
}
