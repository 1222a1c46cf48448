"""Flower apps and the glue that schedules federated rounds on device cohorts."""
