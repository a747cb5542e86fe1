"""Features: one row per customer as of an explicit date (RFM, behaviour, attributes),
with RFM scores and named RFM segments."""
