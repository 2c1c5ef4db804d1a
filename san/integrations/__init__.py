"""Optional integrations with other frameworks; each lights up only when its framework is installed.

``san.integrations.detectron2`` runs SAN inside detectron2 (meta-architecture, config keys, datasets,
mapper, trainer). Nothing else in ``san`` imports these modules.
"""
