"""ACTITO's REST API, the other way round from the webhooks: the router calling ACTITO.

limits.py         ACTITO's documented limits, held across one process
client.py         the API client: access tokens, limits, what each answer means
profiles.py       enrichment: a record's profile as it is now, cached briefly
subscriptions.py  the webhook subscriptions the rules need, and the difference to make
"""
