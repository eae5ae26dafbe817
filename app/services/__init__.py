"""Use cases of the service. Every query is scoped to the caller's organization; another organization's
resource is "not found", never "forbidden"."""
