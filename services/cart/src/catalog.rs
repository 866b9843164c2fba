//! CatalogService's handlers: products per organization, admin-only
//! writes, stock that is either tracked (never below zero) or unlimited,
//! and the internal reservations orders take.

use std::collections::BTreeMap;

use trellis::cart::v1 as pb;
use trellis_store::Page;
use trellis_tenancy::{Role, TenantContext};
use uuid::Uuid;

use crate::error::{CartServiceError, Result};
use crate::model::{
    MAX_CATEGORY_BYTES, MAX_DESCRIPTION_BYTES, MAX_LINES, MAX_NAME_BYTES, Price, Product,
    checked_quantity, checked_sku, checked_stock, checked_text, id, now_ms,
};
use crate::store::{Catalog, Reserved, StockRefusal};

/// Products one GetStock may name.
pub const MAX_STOCK_QUERY: usize = 500;

pub struct CatalogApi {
    pub catalog: Catalog,
}

fn admin(tenant: &TenantContext) -> Result<()> {
    match tenant.role {
        Role::Admin => Ok(()),
        _ => Err(CartServiceError::AdminRequired),
    }
}

fn stock_lines(lines: &[(Uuid, i64)]) -> Vec<pb::StockLine> {
    lines
        .iter()
        .map(|(product_id, quantity)| pb::StockLine {
            product_id: product_id.to_string(),
            quantity: *quantity as i32,
        })
        .collect()
}

impl CatalogApi {
    async fn product(&self, tenant: &TenantContext, product_id: &str) -> Result<Product> {
        let product_id = id("product_id", product_id)?;
        self.catalog
            .get(tenant.org_id, product_id)
            .await?
            .ok_or(CartServiceError::ProductNotFound(product_id))
    }

    pub async fn list(
        &self,
        tenant: &TenantContext,
        request: pb::ListProductsRequest,
    ) -> Result<pb::ListProductsResponse> {
        if request.include_inactive {
            admin(tenant)?;
        }
        let category = checked_text("category", &request.category, MAX_CATEGORY_BYTES, false)?;
        let page = Page::parse(request.page_size, &request.page_token)
            .map_err(|e| CartServiceError::invalid(e.field(), e.to_string()))?;
        let products = self
            .catalog
            .list(
                tenant.org_id,
                Some(category.as_str()).filter(|c| !c.is_empty()),
                request.include_inactive,
                &page,
            )
            .await?;
        let cursors: Vec<(i64, String)> = products
            .iter()
            .map(|p| (p.created_at, p.id.to_string()))
            .collect();
        Ok(pb::ListProductsResponse {
            next_page_token: page.next_token(&cursors, |(at, id)| (*at, id.as_str())),
            products: products.iter().map(Product::message).collect(),
        })
    }

    pub async fn get(&self, tenant: &TenantContext, product_id: &str) -> Result<pb::Product> {
        Ok(self.product(tenant, product_id).await?.message())
    }

    pub async fn stock(
        &self,
        tenant: &TenantContext,
        request: pb::GetStockRequest,
    ) -> Result<pb::GetStockResponse> {
        if request.product_ids.len() > MAX_STOCK_QUERY {
            return Err(CartServiceError::invalid(
                "product_ids",
                format!("at most {MAX_STOCK_QUERY} per call"),
            ));
        }
        let ids = request
            .product_ids
            .iter()
            .map(|p| id("product_ids", p))
            .collect::<Result<Vec<_>>>()?;
        let found: BTreeMap<Uuid, Product> = self
            .catalog
            .many(tenant.org_id, &ids)
            .await?
            .into_iter()
            .map(|p| (p.id, p))
            .collect();
        let levels = ids
            .iter()
            .map(|id| match found.get(id) {
                Some(product) => Ok(pb::StockLevel {
                    product_id: id.to_string(),
                    stock: product.stock,
                }),
                None => Err(CartServiceError::ProductNotFound(*id)),
            })
            .collect::<Result<_>>()?;
        Ok(pb::GetStockResponse { levels })
    }

    pub async fn create(
        &self,
        tenant: &TenantContext,
        request: pb::CreateProductRequest,
    ) -> Result<pb::Product> {
        admin(tenant)?;
        let now = now_ms();
        let product = Product {
            id: Uuid::new_v4(),
            org_id: tenant.org_id,
            sku: checked_sku(&request.sku)?,
            name: checked_text("name", &request.name, MAX_NAME_BYTES, true)?,
            category: checked_text("category", &request.category, MAX_CATEGORY_BYTES, false)?,
            price: Price::checked("price", request.price.as_ref())?,
            stock: request
                .stock
                .map(|s| checked_stock("stock", s))
                .transpose()?,
            active: !request.inactive,
            description: checked_text(
                "description",
                &request.description,
                MAX_DESCRIPTION_BYTES,
                false,
            )?,
            created_at: now,
            updated_at: now,
        };
        if !self.catalog.insert(&product).await? {
            return Err(CartServiceError::SkuTaken(product.sku));
        }
        Ok(product.message())
    }

    /// Only the fields set change. Two admins updating one product at once:
    /// the last write wins for the fields both read.
    pub async fn update(
        &self,
        tenant: &TenantContext,
        request: pb::UpdateProductRequest,
    ) -> Result<pb::Product> {
        admin(tenant)?;
        if request.stock.is_some() && request.unlimited_stock {
            return Err(CartServiceError::invalid(
                "stock",
                "set stock or unlimited_stock, not both",
            ));
        }
        let mut product = self.product(tenant, &request.product_id).await?;
        if let Some(sku) = &request.sku {
            product.sku = checked_sku(sku)?;
        }
        if let Some(name) = &request.name {
            product.name = checked_text("name", name, MAX_NAME_BYTES, true)?;
        }
        if let Some(category) = &request.category {
            product.category = checked_text("category", category, MAX_CATEGORY_BYTES, false)?;
        }
        if request.price.is_some() {
            product.price = Price::checked("price", request.price.as_ref())?;
        }
        if let Some(active) = request.active {
            product.active = active;
        }
        if let Some(description) = &request.description {
            product.description =
                checked_text("description", description, MAX_DESCRIPTION_BYTES, false)?;
        }
        let stock_changes = request.stock.is_some() || request.unlimited_stock;
        if let Some(stock) = request.stock {
            product.stock = Some(checked_stock("stock", stock)?);
        }
        if request.unlimited_stock {
            product.stock = None;
        }
        product.updated_at = now_ms();
        // Stock the request leaves alone is not written back from the read
        // above: reservations may have moved it since.
        if !self.catalog.update(&product, stock_changes).await? {
            return Err(CartServiceError::SkuTaken(product.sku));
        }
        Ok(self.product(tenant, &request.product_id).await?.message())
    }

    pub async fn adjust(
        &self,
        tenant: &TenantContext,
        request: pb::AdjustStockRequest,
    ) -> Result<pb::Product> {
        admin(tenant)?;
        let product_id = id("product_id", &request.product_id)?;
        if request.delta.unsigned_abs() > crate::model::MAX_STOCK as u64 {
            return Err(CartServiceError::invalid("delta", "out of range"));
        }
        match self
            .catalog
            .adjust_stock(tenant.org_id, product_id, request.delta, now_ms())
            .await?
        {
            Ok(product) => Ok(product.message()),
            Err(StockRefusal::NotFound) => Err(CartServiceError::ProductNotFound(product_id)),
            Err(StockRefusal::Unlimited) => Err(CartServiceError::UnlimitedStock(product_id)),
            Err(StockRefusal::BelowZero(stock)) => {
                Err(CartServiceError::StockBelowZero { product_id, stock })
            }
        }
    }

    /// Internal: stock for an order, once per order id.
    pub async fn reserve(&self, request: pb::ReserveStockRequest) -> Result<Vec<pb::StockLine>> {
        let org_id = id("organization_id", &request.organization_id)?;
        let order_id = id("order_id", &request.order_id)?;
        if request.lines.is_empty() || request.lines.len() > MAX_LINES {
            return Err(CartServiceError::invalid(
                "lines",
                format!("1 to {MAX_LINES} lines"),
            ));
        }
        // One product named twice is one reservation of the sum.
        let mut wanted: BTreeMap<Uuid, i64> = BTreeMap::new();
        for line in &request.lines {
            let quantity = checked_quantity("lines.quantity", line.quantity)?;
            *wanted
                .entry(id("lines.product_id", &line.product_id)?)
                .or_default() += quantity;
        }
        let lines: Vec<(Uuid, i64)> = wanted.into_iter().collect();
        match self
            .catalog
            .reserve(org_id, order_id, &lines, now_ms())
            .await?
        {
            Reserved::Lines(taken) => Ok(stock_lines(&taken)),
            Reserved::Released => Err(CartServiceError::ReservationReleased(order_id)),
            Reserved::UnknownProduct(product_id) => {
                Err(CartServiceError::ProductNotFound(product_id))
            }
            Reserved::Insufficient {
                product_id,
                available,
            } => Err(CartServiceError::InsufficientStock {
                product_id,
                available,
            }),
        }
    }

    /// Internal: gives back an order's reservation, once.
    pub async fn release(&self, request: pb::ReleaseStockRequest) -> Result<Vec<pb::StockLine>> {
        let org_id = id("organization_id", &request.organization_id)?;
        let order_id = id("order_id", &request.order_id)?;
        let returned = self.catalog.release(org_id, order_id, now_ms()).await?;
        Ok(stock_lines(&returned))
    }
}
