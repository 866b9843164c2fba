//! The gRPC face of [`CatalogApi`] and [`CartApi`]: unpack (caller,
//! message), call the handler, convert. Errors become statuses in
//! `grpc_result` alone.

use std::sync::Arc;

use tonic::{Request, Response, Status};
use trellis::cart::v1 as pb;
use trellis::cart::v1::cart_service_server::CartService;
use trellis::cart::v1::catalog_service_server::CatalogService;
use trellis_runtime::{grpc_result, status_of};
use trellis_tenancy::{CallContext, TenantContext};

use crate::carts::{CartApi, ItemEdit};
use crate::catalog::CatalogApi;
use crate::error::CartServiceError;

#[derive(Clone)]
pub struct CatalogAdapter(pub Arc<CatalogApi>);

#[derive(Clone)]
pub struct CartAdapter(pub Arc<CartApi>);

/// The user the tenancy layer verified, the call's context (for calls on
/// its behalf) and the message.
fn unpack<T>(request: Request<T>) -> Result<(CallContext, TenantContext, T), Status> {
    let tenant = TenantContext::from_request(&request)
        .cloned()
        .map_err(|_| status_of(CartServiceError::MissingCaller))?;
    Ok((
        CallContext::from_request(&request),
        tenant,
        request.into_inner(),
    ))
}

fn product(result: crate::error::Result<pb::Product>) -> Result<Response<pb::Product>, Status> {
    grpc_result(result)
}

#[tonic::async_trait]
impl CatalogService for CatalogAdapter {
    async fn list_products(
        &self,
        request: Request<pb::ListProductsRequest>,
    ) -> Result<Response<pb::ListProductsResponse>, Status> {
        let (_, tenant, message) = unpack(request)?;
        grpc_result(self.0.list(&tenant, message).await)
    }

    async fn get_product(
        &self,
        request: Request<pb::GetProductRequest>,
    ) -> Result<Response<pb::GetProductResponse>, Status> {
        let (_, tenant, message) = unpack(request)?;
        let found = self.0.get(&tenant, &message.product_id).await;
        grpc_result(found.map(|p| pb::GetProductResponse { product: Some(p) }))
    }

    async fn get_stock(
        &self,
        request: Request<pb::GetStockRequest>,
    ) -> Result<Response<pb::GetStockResponse>, Status> {
        let (_, tenant, message) = unpack(request)?;
        grpc_result(self.0.stock(&tenant, message).await)
    }

    async fn create_product(
        &self,
        request: Request<pb::CreateProductRequest>,
    ) -> Result<Response<pb::CreateProductResponse>, Status> {
        let (_, tenant, message) = unpack(request)?;
        let created = product(self.0.create(&tenant, message).await)?;
        Ok(created.map(|p| pb::CreateProductResponse { product: Some(p) }))
    }

    async fn update_product(
        &self,
        request: Request<pb::UpdateProductRequest>,
    ) -> Result<Response<pb::UpdateProductResponse>, Status> {
        let (_, tenant, message) = unpack(request)?;
        let updated = product(self.0.update(&tenant, message).await)?;
        Ok(updated.map(|p| pb::UpdateProductResponse { product: Some(p) }))
    }

    async fn adjust_stock(
        &self,
        request: Request<pb::AdjustStockRequest>,
    ) -> Result<Response<pb::AdjustStockResponse>, Status> {
        let (_, tenant, message) = unpack(request)?;
        let adjusted = product(self.0.adjust(&tenant, message).await)?;
        Ok(adjusted.map(|p| pb::AdjustStockResponse { product: Some(p) }))
    }

    /// Internal: the tenancy layer admits service tokens only.
    async fn reserve_stock(
        &self,
        request: Request<pb::ReserveStockRequest>,
    ) -> Result<Response<pb::ReserveStockResponse>, Status> {
        let reserved = self.0.reserve(request.into_inner()).await;
        grpc_result(reserved.map(|lines| pb::ReserveStockResponse { lines }))
    }

    async fn release_stock(
        &self,
        request: Request<pb::ReleaseStockRequest>,
    ) -> Result<Response<pb::ReleaseStockResponse>, Status> {
        let released = self.0.release(request.into_inner()).await;
        grpc_result(released.map(|lines| pb::ReleaseStockResponse { lines }))
    }
}

#[tonic::async_trait]
impl CartService for CartAdapter {
    async fn get_cart(
        &self,
        request: Request<pb::GetCartRequest>,
    ) -> Result<Response<pb::GetCartResponse>, Status> {
        let (context, tenant, message) = unpack(request)?;
        let cart = self.0.get(&context, &tenant, &message.session_id).await;
        grpc_result(cart.map(|cart| pb::GetCartResponse { cart: Some(cart) }))
    }

    async fn add_item(
        &self,
        request: Request<pb::AddItemRequest>,
    ) -> Result<Response<pb::AddItemResponse>, Status> {
        let (context, tenant, message) = unpack(request)?;
        let added = self.0.add(&context, &tenant, message).await;
        grpc_result(added.map(|c| pb::AddItemResponse {
            item: c.item,
            cart: Some(c.cart),
        }))
    }

    async fn get_item(
        &self,
        request: Request<pb::GetItemRequest>,
    ) -> Result<Response<pb::GetItemResponse>, Status> {
        let (context, tenant, message) = unpack(request)?;
        let item = self.0.item(&context, &tenant, message).await;
        grpc_result(item.map(|item| pb::GetItemResponse { item: Some(item) }))
    }

    async fn update_item(
        &self,
        request: Request<pb::UpdateItemRequest>,
    ) -> Result<Response<pb::UpdateItemResponse>, Status> {
        let (context, tenant, m) = unpack(request)?;
        let updated = self
            .0
            .update(
                &context,
                &tenant,
                ItemEdit {
                    session_id: m.session_id,
                    item_id: m.item_id,
                    quantity: m.quantity,
                    options: Some(m.options),
                    expected_version: m.expected_version,
                },
            )
            .await;
        grpc_result(updated.map(|c| pb::UpdateItemResponse {
            item: c.item,
            cart: Some(c.cart),
        }))
    }

    async fn update_item_quantity(
        &self,
        request: Request<pb::UpdateItemQuantityRequest>,
    ) -> Result<Response<pb::UpdateItemQuantityResponse>, Status> {
        let (context, tenant, m) = unpack(request)?;
        let updated = self
            .0
            .update(
                &context,
                &tenant,
                ItemEdit {
                    session_id: m.session_id,
                    item_id: m.item_id,
                    quantity: m.quantity,
                    options: None,
                    expected_version: m.expected_version,
                },
            )
            .await;
        grpc_result(updated.map(|c| pb::UpdateItemQuantityResponse {
            item: c.item,
            cart: Some(c.cart),
        }))
    }

    async fn remove_item(
        &self,
        request: Request<pb::RemoveItemRequest>,
    ) -> Result<Response<pb::RemoveItemResponse>, Status> {
        let (context, tenant, message) = unpack(request)?;
        let cart = self.0.remove(&context, &tenant, message).await;
        grpc_result(cart.map(|cart| pb::RemoveItemResponse { cart: Some(cart) }))
    }

    async fn clear_cart(
        &self,
        request: Request<pb::ClearCartRequest>,
    ) -> Result<Response<pb::ClearCartResponse>, Status> {
        let (context, tenant, message) = unpack(request)?;
        let cart = self.0.clear(&context, &tenant, message).await;
        grpc_result(cart.map(|cart| pb::ClearCartResponse { cart: Some(cart) }))
    }
}
