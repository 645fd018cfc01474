"""Statistics shared by analyses (paired effects of interventions: :mod:`.paired`)."""
