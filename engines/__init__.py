"""blindspot's computation: data, models, attacks, analyses. No UI imports here."""
