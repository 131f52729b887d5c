"""An AutoGrid driver plug-in for "linebus", a line-based text protocol over TCP.

The protocol (a stand-in for any vendor protocol): the gateway sends ``READ <unit>``
and the device answers one JSON object of register name -> number; ``WRITE <unit>
<register> <value>`` answers the same object after the write, or ``ERR <why>``.

Only this declaration is read at start (no socket code is imported until a site has a
linebus device); AutoGrid builds its config schema and checks from it.
"""

from autogrid_linebus.connection import LineBusTcp
from drivers.base import DriverInfo

DRIVER = DriverInfo(name="linebus", protocol="linebus", connection_models=(LineBusTcp,),
                    template_model="autogrid_linebus.template:LineBusTemplate",
                    driver="autogrid_linebus.driver:LineBusDriver")
