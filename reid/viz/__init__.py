"""Visual inspection of teacher caches (contact sheets of overlays): see reid.viz.contact_sheet."""
