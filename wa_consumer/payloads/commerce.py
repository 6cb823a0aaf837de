"""Commerce interactive messages: products, catalogs, orders and their status.

A multi-product message holds at most 30 products in at most 10 sections and needs a header.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, Self

from pydantic import Field, model_validator

from .blocks import Body, Header, InteractiveBase, require_section_titles
from .common import CloudModel, NonEmptyStr


class ProductAction(CloudModel):
    catalog_id: NonEmptyStr
    product_retailer_id: NonEmptyStr


class ProductInteractive(InteractiveBase):
    type: Literal["product"]
    body: Body | None = None
    action: ProductAction


class ProductItem(CloudModel):
    product_retailer_id: NonEmptyStr


class ProductSection(CloudModel):
    title: Annotated[str, Field(max_length=24)] | None = None
    product_items: Annotated[list[ProductItem], Field(min_length=1, max_length=30)]


class ProductListAction(CloudModel):
    catalog_id: NonEmptyStr
    sections: Annotated[list[ProductSection], Field(min_length=1, max_length=10)]

    @model_validator(mode="after")
    def _within_limits(self) -> Self:
        require_section_titles(self.sections)
        if sum(len(section.product_items) for section in self.sections) > 30:
            raise ValueError("a multi-product message holds at most 30 products")
        return self


class ProductListInteractive(InteractiveBase):
    type: Literal["product_list"]
    header: Header
    body: Body
    action: ProductListAction


class CatalogAction(CloudModel):
    name: Literal["catalog_message"]
    parameters: dict[str, Any] | None = None


class CatalogInteractive(InteractiveBase):
    type: Literal["catalog_message"]
    body: Body
    action: CatalogAction


class Amount(CloudModel):
    value: int
    offset: int


class OrderDetailsParameters(CloudModel):
    reference_id: NonEmptyStr
    type: NonEmptyStr
    currency: NonEmptyStr
    total_amount: Amount
    order: dict[str, Any]


class OrderDetailsAction(CloudModel):
    name: Literal["review_and_pay"]
    parameters: OrderDetailsParameters


class OrderDetailsInteractive(InteractiveBase):
    type: Literal["order_details"]
    body: Body
    action: OrderDetailsAction


class OrderStatus(CloudModel):
    status: NonEmptyStr
    description: str | None = None


class OrderStatusParameters(CloudModel):
    reference_id: NonEmptyStr
    order: OrderStatus


class OrderStatusAction(CloudModel):
    name: Literal["review_order"]
    parameters: OrderStatusParameters


class OrderStatusInteractive(InteractiveBase):
    type: Literal["order_status"]
    body: Body
    action: OrderStatusAction
