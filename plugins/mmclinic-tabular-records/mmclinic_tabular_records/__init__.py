"""mmclinic tabular-records modality plugin (entry point: ``mmclinic_tabular_records.plugin:TabularRecordsPlugin``)."""

__version__ = "0.1.0"
