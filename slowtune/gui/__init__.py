"""Everything Qt lives here. Widgets call the Qt-free core through workers; they hold no pipeline logic."""
