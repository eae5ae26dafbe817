"""HTTP plumbing shared by the REST API (``app.api``) and the portal (``app.portal``): request dependencies (the
database session, settings, the blob store, the caller by API key or portal session), the streaming multipart
parser, and the Server-Sent Events stream of a job."""
