"""Streamlit UI helpers shared by app.py and the pages (UI layer: no torch, no maths)."""
