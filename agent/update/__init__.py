"""Over-the-air model updates on the device.

``verify`` checks an update Uptane-style with two ``tuf.ngclient`` Updaters (director and
image repository) and downloads the bundle capped at its signed length; the update state
machine, slots and swap build on it. Import the submodules directly, e.g.
``from edgefleet.agent.update.verify import verify_assignment``.
"""
