"""Site configuration: schema (models), loading with positioned errors (loader)."""
