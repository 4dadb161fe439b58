"""Membership layer: attackers, matched negatives and the metrics both the audit and the methods use."""
