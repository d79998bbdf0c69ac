"""Tests of the web page (appliance/server/ui)."""
