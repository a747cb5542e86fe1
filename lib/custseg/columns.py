"""Column names and the canonical schemas of the tables this project writes."""

from __future__ import annotations

# canonical transactions
TXN_ID = "txn_id"
SOURCE = "source"
CUSTOMER_ID = "customer_id"
INVOICE_ID = "invoice_id"
LINE_ID = "line_id"
PRODUCT_ID = "product_id"
QUANTITY = "quantity"
UNIT_PRICE = "unit_price"
AMOUNT = "amount"
EVENT_TS = "event_ts"
STORE = "store"
CHANNEL = "channel"
TXN_TYPE = "txn_type"
RUN_ID = "run_id"
ALL_SOURCES = "ALL"  # the data profile's row for every source together: no source's name

PURCHASE = "purchase"
RETURN = "return"
VOID = "void"
ADJUSTMENT = "adjustment"  # postage, fees, manual adjustments: kept, but not revenue
IS_EXTREME = "is_extreme"

# customer features
AS_OF_DATE = "as_of_date"
FIRST_PURCHASE = "first_purchase_date"
LAST_PURCHASE = "last_purchase_date"
RECENCY_DAYS = "recency_days"
FREQUENCY = "frequency"
MONETARY = "monetary"
TENURE_DAYS = "tenure_days"
AVG_ORDER_VALUE = "avg_order_value"
MEAN_DAYS_BETWEEN = "mean_days_between_purchases"
DISTINCT_PRODUCTS = "distinct_products"
RETURN_RATE = "return_rate"
PURCHASES_PER_MONTH = "purchases_per_month"

# customer value (custseg.value): joinable into the features by customer_id
P_ALIVE = "p_alive"
CLV = "clv"
VALUE_FEATURES = (CLV, P_ALIVE)  # what the features gain by the join: profiled always, model features if configured

# model columns
PREDICTION = "cluster"  # a clusterer's raw cluster number, before segment ids are assigned
VECTOR = "features_vector"  # what the clusterer sees: scaled (and projected) features

# segment labels and sweep
SEGMENT_ID = "segment_id"
K = "k"
MODEL_VERSION = "model_version"
WCSS = "wcss"
