"""The Streamlit demonstrator's helpers (``streamlit run app.py``).

    jobs         Streamlit-free: long experiments as generators pumped in small time slices
    settings     the settings of every page, their defaults per dataset and their cache keys
    precompute   ``python -m webapp.precompute``: the shipped default results every page opens with
    state        Streamlit: cached data/models/results, the dataset choice, the model picker, uploads
    live         Streamlit: Run/Stop buttons and the fragment that advances a job a slice at a time
    ui           Streamlit: small shared drawing helpers (metrics, δ pictures, downloads)

``uat_core`` knows nothing of Streamlit; everything Streamlit-specific lives here.
"""
