"""The committee queues: referrals per municipality, their states and decisions, and triage."""
