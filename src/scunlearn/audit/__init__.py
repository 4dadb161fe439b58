"""The post-hoc audit: membership-inference features, attackers, honest scoring, utility."""
