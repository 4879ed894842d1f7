"""DENETHOR-layout simulated scenes, and the cropmap inputs and real-shaped PlanetScope scenes written from them.

``python -m training.simulate`` runs :mod:`training.simulate.run`.
"""
