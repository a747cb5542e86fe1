"""Customer value: the BG/NBD model of repeat purchases and the Gamma-Gamma model of spend,
fitted on Spark, giving each customer's P(alive), expected purchases, spend and CLV."""
